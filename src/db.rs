//! [`Db`]: the client handle, routing and retries hidden behind it; [`WriteBatch`], and
//! the argument traits [`IntoBytes`] (keys and values) and [`IntoKeyRange`] (scans).

use std::convert::Infallible;
use std::ops::{
    Bound, Range, RangeBounds, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive,
};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use regionkv_engine::{Region, SessionId, StoreId};
use regionkv_raft::Error as E;
use regionkv_raft::txn::mvcc;
use regionkv_raft::txn::plan::DEFAULT_TXN_TTL_MS;
use regionkv_raft::{Op, Query, QueryResult, ReadRequest, WriteRequest, WriteSession};

use crate::backend::Backend;
use crate::defaults::{
    DB_ATTEMPT_TIMEOUT, DB_DEADLINE, DB_FIRST_BACKOFF, DB_MAX_BACKOFF, DB_WRITE_RETRY_MAX,
};
use crate::error::{Error, Result};
use crate::router::Router;

mod async_commit;
mod gc;
mod seams;
mod snapshot;
mod tso;
mod two_phase;
mod txn;
#[doc(hidden)]
pub use seams::TxnSeams;
pub use snapshot::Transaction;
pub use txn::{LockWait, TxnOutcome};

/// A range of keys for [`Db::scan`]: `..`, `a..`, `..b`, `a..b`, `a..=b`, `..=b`, or a
/// pair of [`Bound`]s, over any key type that is `AsRef<[u8]>`.
pub trait IntoKeyRange {
    /// The range as `start <= key < end` (`None`: no end).
    fn to_bounds(self) -> (Vec<u8>, Option<Vec<u8>>);
}

/// The smallest key after `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

fn start_of<K: AsRef<[u8]>>(bound: Bound<&K>) -> Vec<u8> {
    match bound {
        Bound::Included(k) => k.as_ref().to_vec(),
        Bound::Excluded(k) => successor(k.as_ref()),
        Bound::Unbounded => Vec::new(),
    }
}

fn end_of<K: AsRef<[u8]>>(bound: Bound<&K>) -> Option<Vec<u8>> {
    match bound {
        Bound::Included(k) => Some(successor(k.as_ref())),
        Bound::Excluded(k) => Some(k.as_ref().to_vec()),
        Bound::Unbounded => None,
    }
}

impl IntoKeyRange for RangeFull {
    fn to_bounds(self) -> (Vec<u8>, Option<Vec<u8>>) {
        (Vec::new(), None)
    }
}

macro_rules! key_range {
    ($($range:ident),*) => {$(
        impl<K: AsRef<[u8]>> IntoKeyRange for $range<K> {
            fn to_bounds(self) -> (Vec<u8>, Option<Vec<u8>>) {
                (start_of(self.start_bound()), end_of(self.end_bound()))
            }
        }
    )*};
}

key_range!(Range, RangeFrom, RangeTo, RangeInclusive, RangeToInclusive);

impl<K: AsRef<[u8]>> IntoKeyRange for (Bound<K>, Bound<K>) {
    fn to_bounds(self) -> (Vec<u8>, Option<Vec<u8>>) {
        (start_of(self.0.as_ref()), end_of(self.1.as_ref()))
    }
}

/// A key or value for [`Db::put`], [`Db::delete`] and [`WriteBatch`]: the same forms
/// everywhere. Borrowed bytes (`&str`, `&[u8]`, `b"..."`, `&String`, `&Vec<u8>`,
/// `&Bytes`) are copied once; owned ones (`Vec<u8>`, `String`, [`Bytes`], `[u8; N]`)
/// are taken as they are.
pub trait IntoBytes {
    /// The bytes, owned.
    fn into_bytes(self) -> Bytes;
}

impl<T: AsRef<[u8]> + ?Sized> IntoBytes for &T {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(self.as_ref())
    }
}

impl IntoBytes for Vec<u8> {
    fn into_bytes(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoBytes for String {
    fn into_bytes(self) -> Bytes {
        Bytes::from(self)
    }
}

impl IntoBytes for Bytes {
    fn into_bytes(self) -> Bytes {
        self
    }
}

impl<const N: usize> IntoBytes for [u8; N] {
    fn into_bytes(self) -> Bytes {
        Bytes::copy_from_slice(&self)
    }
}

/// Changes that apply atomically: all of them or none ([`Db::write`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Sets `key` to `value`.
    pub fn put(&mut self, key: impl IntoBytes, value: impl IntoBytes) -> &mut Self {
        self.ops.push(Op::Put { key: key.into_bytes(), value: value.into_bytes() });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl IntoBytes) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into_bytes() });
        self
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the batch holds no change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A client of a cluster: `Clone + Send + Sync`, cheap to clone.
///
/// Every call finds the region holding its key (a cache filled from the cluster
/// directory), sends the request to the region's leader, and retries what can be
/// retried (`NotLeader`, `EpochNotMatch`, `KeyNotInRegion`, `RegionNotFound`, a merge
/// in progress, a store that stopped, no answer), refreshing the cache from each
/// answer, with a bounded backoff until the deadline (10 s by default). The caller
/// sees a retryable error only once the deadline passed: [`Error::Unavailable`],
/// naming the last one.
///
/// Writes are applied exactly once, however often they are sent: every write goes
/// out in a client session (a pool of them is shared by a `Db` and its clones) with
/// its own sequence number, the same
/// for each retry, and a region skips a number it has applied already. So a write
/// whose first attempt timed out, or whose store stopped with it in flight, is sent
/// again safely; if the call fails in the end, the write may or may not have been
/// applied (once at most).
#[derive(Clone)]
pub struct Db {
    router: Router,
    deadline: Duration,
    sessions: Arc<Sessions>,
    /// What a write does on a live lock.
    lock_wait: LockWait,
    /// The lock and record TTL of this client's transactions.
    txn_ttl_ms: u64,
    txn: Arc<txn::TxnShared>,
    /// Test seams of the two-phase coordinator (`None` but in tests).
    seams: Option<Arc<TxnSeams>>,
}

/// One client session: an id, and the number of its last write.
#[derive(Debug)]
struct Session {
    id: SessionId,
    last_seq: u64,
}

/// The client sessions of a [`Db`] and its clones, for exactly-once writes
/// (ARCHITECTURE.md, "Exactly once").
///
/// A write takes an idle session (or makes one, with a random id), numbers itself with
/// the session's next sequence number, keeps that (id, number) for every attempt, and
/// gives the session back when the call returns, whatever its outcome. So a session
/// has at most one write in flight, and its writes are numbered in the order they
/// were made: a region that remembers the last number it applied per session knows
/// that a number at or below it was applied already, or was given up by the client
/// (which has moved on, so a late copy must not apply either). A write given up at the
/// deadline keeps its number: the next write of the session is the next number. The
/// pool holds as many sessions as writes ever ran at once.
#[derive(Debug, Default)]
struct Sessions {
    idle: Mutex<Vec<Session>>,
}

impl Sessions {
    /// An idle session, or a new one.
    fn take(&self) -> Result<Session> {
        if let Some(session) = self.idle.lock().pop() {
            return Ok(session);
        }
        // Random: ids must not collide between clients, processes and restarts (a
        // session seen with a higher number would swallow another's write).
        let id = getrandom::u64()
            .map_err(|e| Error::Io(std::io::Error::other(format!("no random session id: {e}"))))?;
        Ok(Session { id: SessionId(id), last_seq: 0 })
    }

    /// Numbers the next write of `session`.
    fn next_write(session: &mut Session) -> WriteSession {
        session.last_seq += 1;
        WriteSession { id: session.id, seq: session.last_seq }
    }

    fn give_back(&self, session: Session) {
        self.idle.lock().push(session);
    }
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("deadline", &self.deadline).finish_non_exhaustive()
    }
}

/// A one-shot reply slot. The waiting client parks on a condition variable without
/// spinning: with many clients on few cores, spinning waiters starve the store's own
/// threads (measured: ~8% of CPU in `sched_yield` with a spinning channel).
pub(crate) struct Oneshot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Oneshot<T> {
    pub fn new() -> Arc<Oneshot<T>> {
        Arc::new(Oneshot { value: Mutex::new(None), ready: Condvar::new() })
    }

    pub fn set(&self, value: T) {
        *self.value.lock() = Some(value);
        self.ready.notify_one();
    }

    pub fn wait(&self, timeout: Duration) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut value = self.value.lock();
        while value.is_none() {
            if self.ready.wait_until(&mut value, deadline).timed_out() {
                break;
            }
        }
        value.take()
    }
}

/// Calls `send` with a reply and waits up to `timeout` for it (`None`: no answer).
pub(crate) fn ask<T: Send + 'static>(
    timeout: Duration,
    send: impl FnOnce(regionkv_raft::Reply<T>),
) -> Option<regionkv_raft::Result<T>> {
    let Ok(answer) = try_ask(timeout, |reply| {
        send(reply);
        Ok::<(), Infallible>(())
    });
    answer
}

/// [`ask`] for a `send` that may refuse before sending: its error comes back at once,
/// without waiting for a reply that will not come.
pub(crate) fn try_ask<T: Send + 'static, E>(
    timeout: Duration,
    send: impl FnOnce(regionkv_raft::Reply<T>) -> std::result::Result<(), E>,
) -> std::result::Result<Option<regionkv_raft::Result<T>>, E> {
    let slot = Oneshot::new();
    let reply = slot.clone();
    send(Box::new(move |r| reply.set(r)))?;
    Ok(slot.wait(timeout))
}

impl Db {
    pub(crate) fn new(router: Router) -> Db {
        Db {
            router,
            deadline: DB_DEADLINE,
            sessions: Arc::default(),
            lock_wait: LockWait::NoWait,
            txn_ttl_ms: DEFAULT_TXN_TTL_MS,
            txn: Arc::default(),
            seams: None,
        }
    }

    /// How this client reaches the stores.
    pub(crate) fn router(&self) -> &Router {
        &self.router
    }

    /// The deadline of each call.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// The same client with another [`LockWait`]: what a write or a read does when a key holds
    /// a live transaction's lock (by default it answers [`Error::Conflict`] at once).
    #[must_use]
    pub fn with_lock_wait(mut self, wait: LockWait) -> Db {
        self.lock_wait = wait;
        self
    }

    /// The same client with another TTL for the locks and records of its
    /// transactions (default 3 s): how long others wait for a silent coordinator
    /// before they abort its transaction. Short TTLs are for tests.
    #[must_use]
    pub fn with_txn_ttl(mut self, ttl: Duration) -> Db {
        self.txn_ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self
    }

    /// The same client with another deadline per call. A write stops retrying after 5
    /// minutes whatever the deadline: half the time a region remembers a session, so
    /// that its last retry is still recognised.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Db {
        self.deadline = deadline;
        self
    }

    /// Sets `key` to `value`; returns once the write is committed and applied.
    pub fn put(&self, key: impl IntoBytes, value: impl IntoBytes) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(key, value);
        self.write(batch)
    }

    /// Removes `key`.
    pub fn delete(&self, key: impl IntoBytes) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write(batch)
    }

    /// Applies `batch` atomically: all of it or none, and the caller is answered once
    /// it is applied. A batch whose keys lie in one region is one Raft write; one that
    /// spans regions is written by two-phase commit (ARCHITECTURE.md,
    /// "Transactions"), which needs cluster version 3 ([`Error::FeatureNotActive`]
    /// below it).
    ///
    /// A key locked by another transaction is resolved through its record; a live
    /// one is [`Error::Conflict`] (retryable: nothing was written), or waited for
    /// ([`Db::with_lock_wait`]). Besides [`Error::Unavailable`], a two-phase batch may
    /// end in [`Error::TxnAborted`] (retryable: nothing was written) or
    /// [`Error::Indeterminate`] (its commit was sent and no answer came: ask
    /// [`Db::txn_outcome`]).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let WriteBatch { ops } = batch;
        let _span = tracing::debug_span!("db.write", ops = ops.len()).entered();
        if ops.is_empty() {
            return Ok(());
        }
        if ops.iter().any(|op| op.key().is_empty()) {
            return Err(Error::InvalidRequest("empty keys are not allowed".into()));
        }
        if let Some(op) = ops.iter().find(|op| mvcc::is_txn_key(op.key())) {
            return Err(raw_in_keyspace(op.key()));
        }
        let deadline = self.deadline.min(DB_WRITE_RETRY_MAX);
        let start = Instant::now();
        let one = self.through_locks(deadline, || {
            self.write_one_region(&ops, deadline.saturating_sub(start.elapsed()))
        });
        match one {
            Err(Error::CrossRegionBatch { .. }) => {
                self.write_two_phase(&ops, deadline.saturating_sub(start.elapsed()))
            }
            other => other,
        }
    }

    /// Writes `ops` as one Raft write of one region (1PC); [`Error::CrossRegionBatch`]
    /// if they span regions.
    fn write_one_region(&self, ops: &[Op], deadline: Duration) -> Result<()> {
        let Some(first) = ops.first() else { return Ok(()) };
        let key = first.key().to_vec();
        let mut session = self.sessions.take()?;
        // One number for every attempt: the write applies at most once.
        let numbered = Sessions::next_write(&mut session);
        let result = self.call(&key, deadline, |backend, store, region, reply| {
            if let Some(outside) = ops.iter().find(|op| !region.contains(op.key())) {
                // Routing is current (the caller refreshed it on every refusal):
                // the batch spans regions.
                let other = self.router.locate(outside.key()).map(|r| r.region.id);
                let regions = std::iter::once(region.id).chain(other).collect();
                return Err(Error::CrossRegionBatch { regions });
            }
            backend.write(
                store,
                WriteRequest {
                    region: region.id,
                    epoch: region.epoch,
                    ops: ops.to_vec(),
                    session: Some(numbered),
                    reply,
                },
            );
            Ok(())
        });
        // Whatever happened, this write is the session's last: the next one is
        // numbered after it.
        self.sessions.give_back(session);
        result
    }

    /// The value of `key`, read linearizably.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let _span = tracing::debug_span!("db.get").entered();
        let key = Bytes::copy_from_slice(key.as_ref());
        if mvcc::is_txn_key(&key) {
            return Err(raw_in_keyspace(&key));
        }
        let query = Query::Get { key: key.clone(), read_ts: None };
        match self.read(&key, &query)? {
            QueryResult::Value(v) => Ok(v),
            QueryResult::Rows(_) => Err(Error::InvalidRequest("a get returned rows".into())),
        }
    }

    /// Up to `limit` pairs with keys in `range`, in key order, read linearizably
    /// region by region: `db.scan(.., 100)`, `db.scan("a".."m", 10)`,
    /// `db.scan(b"user/".., 10)`, or a pair of [`Bound`]s. A store answers at most a
    /// page (10,000 pairs or 4 MiB by default) per request; the scan asks again from
    /// where each page stopped, so every pair up to `limit` comes back once, in order
    /// (each page is linearizable on its own, as each region's part is).
    pub fn scan(&self, range: impl IntoKeyRange, limit: usize) -> Result<Vec<(Bytes, Bytes)>> {
        let _span = tracing::debug_span!("db.scan", limit).entered();
        let (start, end) = range.to_bounds();
        if mvcc::is_txn_key(&start) {
            return Err(raw_in_keyspace(&start));
        }
        // Raw keys end where the transactional keyspace begins.
        let keyspace = vec![mvcc::TXN_KEYSPACE];
        let end = end.map_or(keyspace.clone(), |e| e.min(keyspace));
        self.scan_raw(start, Some(&end), limit, None)
    }

    /// [`Db::scan`] of store keys `start..end`, any of them; `read_ts`: the snapshot
    /// timestamp of a transaction's read (`Query::Scan::read_ts`), `None` for raw.
    fn scan_raw(
        &self,
        start: Vec<u8>,
        end: Option<&[u8]>,
        limit: usize,
        read_ts: Option<u64>,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let mut out = Vec::new();
        let mut from = start;
        while out.len() < limit && end.is_none_or(|end| from.as_slice() < end) {
            let query = Query::Scan {
                start: Bytes::copy_from_slice(&from),
                end: end.map(Bytes::copy_from_slice),
                limit: limit - out.len(),
                read_ts,
            };
            // The region that served this part (its end is where the next starts).
            let served = Mutex::new(None);
            let rows = self.through_locks(self.deadline, || {
                self.call(&from, self.deadline, |backend, store, region, reply| {
                    *served.lock() = Some(region.end.clone());
                    backend.read(
                        store,
                        ReadRequest {
                            region: region.id,
                            epoch: region.epoch,
                            query: query.clone(),
                            reply,
                        },
                    );
                    Ok(())
                })
            })?;
            match rows {
                QueryResult::Rows(page) => {
                    out.extend(page.rows);
                    if let Some(resume) = page.resume {
                        // The store's caps cut the page: go on from the first pair it
                        // did not answer (routed again: the region may have changed).
                        if resume.as_ref() <= from.as_slice() {
                            return Err(Error::Protocol(format!(
                                "a scan from {from:?} resumed at {resume:?}, not after it"
                            )));
                        }
                        from = resume.to_vec();
                        continue;
                    }
                }
                QueryResult::Value(_) => {
                    return Err(Error::InvalidRequest("a scan returned a value".into()));
                }
            }
            match served.into_inner().flatten() {
                Some(next) => from = next,
                None => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// A read of `key`'s region; a lock met is resolved (or waited for) and the read
    /// made again: a reader never sees an uncommitted value.
    fn read(&self, key: &[u8], query: &Query) -> Result<QueryResult> {
        self.through_locks(self.deadline, || {
            self.call(key, self.deadline, |backend, store, region, reply| {
                backend.read(
                    store,
                    ReadRequest {
                        region: region.id,
                        epoch: region.epoch,
                        query: query.clone(),
                        reply,
                    },
                );
                Ok(())
            })
        })
    }

    /// Sends a request for `key` to its region's leader, learning from every refusal
    /// and retrying until `deadline`.
    ///
    /// Every request sent here may be sent again whatever became of the last attempt:
    /// reads change nothing, and writes carry their session and number, so a copy of
    /// a write that was applied already is not applied again. That is what makes it
    /// safe to retry an attempt whose outcome is unknown (no answer in time, or
    /// `CancelledInFlight`: its store stopped with it in flight), besides the refusals
    /// made before anything was proposed (`NotLeader`, `EpochNotMatch`, `Cancelled`,
    /// ...).
    fn call<T: Send + 'static>(
        &self,
        key: &[u8],
        deadline: Duration,
        send: impl Fn(&dyn Backend, StoreId, &Region, regionkv_raft::Reply<T>) -> Result<()>,
    ) -> Result<T> {
        let start = Instant::now();
        let backend = self.router.backend().clone();
        let mut last = String::from("no attempt");
        let mut backoff = DB_FIRST_BACKOFF;
        let mut turn = 0usize;
        while start.elapsed() < deadline {
            if backend.is_shut() {
                return Err(Error::Shutdown);
            }
            let Some(record) = self.router.locate(key) else {
                last = "no store knows the region of the key".into();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(DB_MAX_BACKOFF);
                continue;
            };
            let region = record.region;
            // The known leader, else the region's stores in turn.
            let store = record.leader.unwrap_or_else(|| {
                turn += 1;
                region.peers.get(turn % region.peers.len().max(1)).map_or(StoreId(0), |p| p.store)
            });
            let wait = DB_ATTEMPT_TIMEOUT.min(deadline.saturating_sub(start.elapsed()));
            // One span per attempt: a slow call shows where its time went.
            let _attempt =
                tracing::trace_span!("db.call", region = region.id.0, store = store.0, turn)
                    .entered();
            let outcome = try_ask(wait, |reply| send(backend.as_ref(), store, &region, reply))?;
            match outcome {
                Some(Ok(v)) => {
                    if record.leader != Some(store) {
                        self.router.set_leader(region.id, Some(store));
                    }
                    return Ok(v);
                }
                Some(Err(E::NotLeader { leader: Some(l), .. })) if l != store => {
                    self.router.set_leader(region.id, Some(l));
                    last = format!("store {store} does not lead region {}", region.id);
                    continue; // follow the hint at once
                }
                Some(Err(E::EpochNotMatch { current, .. })) => {
                    self.router.learn(&current);
                    if current.iter().all(|r| r.id != region.id) {
                        self.router.forget(region.id);
                    }
                    last = format!("region {} changed", region.id);
                    continue;
                }
                Some(Err(E::KeyNotInRegion { current, .. })) => {
                    match current {
                        Some(r) => self.router.learn(&[r]),
                        None => self.router.forget(region.id),
                    }
                    last = format!("the key left region {}", region.id);
                    continue;
                }
                Some(Err(E::RegionNotFound { .. })) => {
                    self.router.forget(region.id);
                    last = format!("store {store} has no replica of region {}", region.id);
                }
                // Refused before propose, or in flight when its store stopped (outcome
                // unknown: safe to send again, see above).
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                    self.router.set_leader(region.id, None);
                    last = e.to_string();
                }
                Some(Err(e)) => return Err(e.into()),
                // No answer: the outcome is unknown; safe to send again (see above).
                None => {
                    self.router.set_leader(region.id, None);
                    last = format!("store {store} did not answer within {wait:?}");
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(DB_MAX_BACKOFF);
        }
        Err(Error::Unavailable { waited: start.elapsed(), last })
    }
}

/// The refusal of a raw read or write of a key of the transactional keyspace.
fn raw_in_keyspace(key: &[u8]) -> Error {
    Error::InvalidRequest(format!(
        "key {key:?} starts with byte {:#04x}, the transactional keyspace: it is read and \
         written only through Db::transaction",
        mvcc::TXN_KEYSPACE
    ))
}

#[cfg(test)]
mod tests {
    use std::ops::Bound;

    use bytes::Bytes;
    use regionkv_raft::Op;

    use super::{IntoKeyRange, WriteBatch};

    #[test]
    fn keys_and_values_take_every_byte_form() {
        let owned_string = String::from("k");
        let owned_vec = b"v".to_vec();
        let shared = Bytes::from_static(b"v");
        let mut batch = WriteBatch::new();
        batch
            .put("k", "v")
            .put(&b"k"[..], &b"v"[..])
            .put(b"k", b"v")
            .put(*b"k", *b"v")
            .put(&owned_string, &owned_vec)
            .put(owned_string.clone(), owned_vec.clone())
            .put(Bytes::from_static(b"k"), &shared)
            .delete("k")
            .delete(owned_string);
        let put = Op::Put { key: Bytes::from_static(b"k"), value: shared };
        let delete = Op::Delete { key: Bytes::from_static(b"k") };
        let mut expected = vec![put; 7];
        expected.extend([delete.clone(), delete]);
        assert_eq!(batch.ops, expected);
    }

    #[test]
    fn every_range_form_maps_to_a_start_and_an_exclusive_end() {
        assert_eq!((..).to_bounds(), (Vec::new(), None));
        assert_eq!(("a".."m").to_bounds(), (b"a".to_vec(), Some(b"m".to_vec())));
        assert_eq!(("a"..="m").to_bounds(), (b"a".to_vec(), Some(b"m\0".to_vec())));
        assert_eq!((b"k"..).to_bounds(), (b"k".to_vec(), None));
        assert_eq!((..b"k".to_vec()).to_bounds(), (Vec::new(), Some(b"k".to_vec())));
        assert_eq!((..="k").to_bounds(), (Vec::new(), Some(b"k\0".to_vec())));
        assert_eq!((Bound::Excluded("a"), Bound::Unbounded).to_bounds(), (b"a\0".to_vec(), None));
    }
}
