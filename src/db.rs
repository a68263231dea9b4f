//! [`Db`]: the client handle. Routing and retries are hidden behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use regionkv_engine::{Epoch, RegionId, StoreId};
use regionkv_raft::{Op, Query, QueryResult, ReadRequest, Store, WriteRequest};

use crate::cluster::{ClusterInner, FIRST_REGION};
use crate::error::{Error, Result};

/// Changes that apply atomically (within one region).
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
    pub fn put(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> &mut Self {
        self.ops.push(Op::Put { key: key.into(), value: value.into() });
        self
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: impl Into<Bytes>) -> &mut Self {
        self.ops.push(Op::Delete { key: key.into() });
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
/// Every call finds the region's leader (cached), sends the request, and retries
/// retryable errors (`NotLeader`, `EpochNotMatch`, a store that stopped, ...) with a
/// bounded backoff until the deadline (10 s by default). The caller sees a retryable
/// error only when the deadline passed: [`Error::Unavailable`].
#[derive(Clone)]
pub struct Db {
    cluster: Arc<ClusterInner>,
    /// The store believed to lead the first region (0: unknown).
    leader: Arc<AtomicU64>,
    deadline: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("leader", &self.leader.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A one-shot reply slot. The waiting client parks on a condition variable without
/// spinning: with many clients on few cores, spinning waiters starve the store's own
/// threads (measured: ~8% of CPU in `sched_yield` with a spinning channel).
struct Oneshot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Oneshot<T> {
    fn new() -> Arc<Oneshot<T>> {
        Arc::new(Oneshot { value: Mutex::new(None), ready: Condvar::new() })
    }

    fn set(&self, value: T) {
        *self.value.lock() = Some(value);
        self.ready.notify_one();
    }

    fn wait(&self, timeout: Duration) -> Option<T> {
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

/// How long one attempt waits before the client tries elsewhere.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

impl Db {
    pub(crate) fn new(cluster: Arc<ClusterInner>) -> Db {
        Db { cluster, leader: Arc::new(AtomicU64::new(0)), deadline: Duration::from_secs(10) }
    }

    /// The same client with another deadline per call.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Duration) -> Db {
        self.deadline = deadline;
        self
    }

    /// Sets `key` to `value`; returns once the write is committed and applied.
    pub fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.put(Bytes::copy_from_slice(key.as_ref()), Bytes::copy_from_slice(value.as_ref()));
        self.write(batch)
    }

    /// Removes `key`.
    pub fn delete(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let mut batch = WriteBatch::new();
        batch.delete(Bytes::copy_from_slice(key.as_ref()));
        self.write(batch)
    }

    /// Applies `batch` atomically: all of it or none.
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let WriteBatch { ops } = batch;
        if ops.is_empty() {
            return Ok(());
        }
        if ops.iter().any(|op| op.key().is_empty()) {
            return Err(Error::InvalidRequest("empty keys are not allowed".into()));
        }
        let region = FIRST_REGION;
        self.call(region, |store, epoch, reply| {
            store.write(WriteRequest { region, epoch, ops: ops.clone(), reply });
        })
    }

    /// The value of `key`, read linearizably.
    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Bytes>> {
        let key = Bytes::copy_from_slice(key.as_ref());
        match self.read(&Query::Get { key })? {
            QueryResult::Value(v) => Ok(v),
            QueryResult::Rows(_) => Err(Error::InvalidRequest("a get returned rows".into())),
        }
    }

    /// Up to `limit` pairs with `start <= key < end` (`end == None`: to the end), in
    /// key order, read linearizably.
    pub fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Bytes, Bytes)>> {
        let query = Query::Scan {
            start: Bytes::copy_from_slice(start.as_ref()),
            end: end.map(Bytes::copy_from_slice),
            limit,
        };
        match self.read(&query)? {
            QueryResult::Rows(rows) => Ok(rows),
            QueryResult::Value(_) => Err(Error::InvalidRequest("a scan returned a value".into())),
        }
    }

    fn read(&self, query: &Query) -> Result<QueryResult> {
        let region = FIRST_REGION;
        self.call(region, |store, epoch, reply| {
            store.read(ReadRequest { region, epoch, query: query.clone(), reply });
        })
    }

    /// Sends a request to the region's leader, following hints and retrying.
    fn call<T: Send + 'static>(
        &self,
        region: RegionId,
        send: impl Fn(&Store, Epoch, regionkv_raft::Reply<T>),
    ) -> Result<T> {
        let start = Instant::now();
        let mut last = String::from("no attempt");
        let mut backoff = Duration::from_millis(1);
        let mut next_store = 0usize;
        while start.elapsed() < self.deadline {
            if self.cluster.shut.load(Ordering::Relaxed) {
                return Err(Error::Shutdown);
            }
            let Some((id, store)) = self.pick(&mut next_store) else {
                last = "no store is running".into();
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
                continue;
            };
            let epoch = store.context().engine.region(region).map_or(Epoch::INITIAL, |r| r.epoch);
            let slot = Oneshot::new();
            let reply = slot.clone();
            send(&store, epoch, Box::new(move |r| reply.set(r)));
            let wait = ATTEMPT_TIMEOUT.min(self.deadline.saturating_sub(start.elapsed()));
            match slot.wait(wait) {
                Some(Ok(v)) => {
                    self.leader.store(id.0, Ordering::Relaxed);
                    return Ok(v);
                }
                Some(Err(regionkv_raft::Error::NotLeader { leader: Some(l), .. })) if l != id => {
                    self.leader.store(l.0, Ordering::Relaxed);
                    last = format!("store {id} is not the leader");
                    continue; // follow the hint at once
                }
                Some(Err(e)) if e.is_retryable() || e.is_cancelled() => {
                    last = e.to_string();
                    self.leader.store(0, Ordering::Relaxed);
                }
                Some(Err(e)) => return Err(e.into()),
                None => {
                    last = format!("store {id} did not answer within {wait:?}");
                    self.leader.store(0, Ordering::Relaxed);
                }
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
        Err(Error::Unavailable { waited: start.elapsed(), last })
    }

    /// The cached leader if it runs, else the next store round-robin.
    fn pick(&self, next: &mut usize) -> Option<(StoreId, Arc<Store>)> {
        let stores = self.cluster.stores.read();
        let cached = StoreId(self.leader.load(Ordering::Relaxed));
        if let Some(store) = stores.get(&cached) {
            return Some((cached, store.clone()));
        }
        if stores.is_empty() {
            return None;
        }
        *next = (*next + 1) % stores.len();
        stores.iter().nth(*next).map(|(&id, s)| (id, s.clone()))
    }
}
