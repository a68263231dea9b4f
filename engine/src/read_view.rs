//! [`ReadView`]: a consistent, MVCC read view of the whole store at one sequence
//! number, which keeps what it can see from being dropped while it lives.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::engine::Inner;
use crate::memtable::{Found, Seq};

/// A consistent read view of the whole store at one sequence number.
///
/// Holding it keeps every version it can see in memory; drop it when done.
#[derive(Debug)]
pub struct ReadView {
    inner: Arc<Inner>,
    seq: u64,
}

impl ReadView {
    /// A read view at the latest committed round, registered so that commits keep what
    /// it can see.
    pub(crate) fn register(inner: &Arc<Inner>) -> ReadView {
        let mut views = inner.read_views.lock();
        // Read under the registry lock: a commit publishes its sequence number before
        // it reads the registry to decide what to prune (see `commit_writes`).
        let seq = inner.visible_seq.load(Ordering::Acquire);
        *views.entry(seq).or_insert(0) += 1;
        ReadView { inner: inner.clone(), seq }
    }

    /// The sequence number it reads at.
    pub fn seq(&self) -> Seq {
        Seq(self.seq)
    }

    /// The value of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self.inner.memtable.get(key, self.seq) {
            Found::Value(v) => Some(v),
            Found::Deleted | Found::Missing => None,
        }
    }

    /// Up to `limit` live pairs with keys in `[start, end)` (`end == None`:
    /// unbounded), in key order.
    pub fn scan(&self, start: &[u8], end: Option<&[u8]>, limit: usize) -> Vec<(Bytes, Bytes)> {
        let mut out = Vec::new();
        self.inner.memtable.scan(start, end, self.seq, limit, |k, v| {
            out.push((Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)));
            true
        });
        out
    }

    /// Calls `f(key, value)` for the live pairs in `[start, end)` in key order until it
    /// returns false; no copies.
    pub fn for_each(&self, start: &[u8], end: Option<&[u8]>, f: impl FnMut(&[u8], &[u8]) -> bool) {
        self.inner.memtable.scan(start, end, self.seq, usize::MAX, f);
    }
}

impl Clone for ReadView {
    fn clone(&self) -> Self {
        *self.inner.read_views.lock().entry(self.seq).or_insert(0) += 1;
        ReadView { inner: self.inner.clone(), seq: self.seq }
    }
}

impl Drop for ReadView {
    fn drop(&mut self) {
        let mut snapshots = self.inner.read_views.lock();
        if let Some(n) = snapshots.get_mut(&self.seq) {
            *n -= 1;
            if *n == 0 {
                snapshots.remove(&self.seq);
            }
        }
    }
}
