//! How the apply thread and readers reach a region's transaction tables: through the
//! write-batch round (changes, published when it commits) and the engine (reads).

use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::engine::Engine;
use crate::error::Result;
use crate::region::RegionId;
use crate::round::ApplyRound;

use super::{Lock, TxnOverlay, TxnTable};

impl Engine {
    /// True if any region of this store holds a lock: a read that finds none skips
    /// every lock lookup (one atomic load).
    pub fn has_txn_locks(&self) -> bool {
        self.inner.txn_locks.load(Ordering::Acquire) > 0
    }

    /// Locks held by all regions of this store (for metrics and tests).
    pub fn txn_lock_total(&self) -> u64 {
        self.inner.txn_locks.load(Ordering::Acquire)
    }

    /// The encoded lock on `key` in `region`, as published (after the last committed
    /// round that changed it).
    pub fn txn_lock(&self, region: RegionId, key: &[u8]) -> Option<Bytes> {
        if !self.has_txn_locks() {
            return None;
        }
        self.inner.txn.lock().get(&region)?.locks.get(key).cloned()
    }

    /// Up to `limit` encoded locks of `region` with `start <= key < end` (`None`: no
    /// end), in key order.
    pub fn txn_locks(
        &self,
        region: RegionId,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Vec<(Bytes, Bytes)> {
        if !self.has_txn_locks() || limit == 0 {
            return Vec::new();
        }
        let tables = self.inner.txn.lock();
        tables.get(&region).map(|t| t.locks_in(start, end, limit)).unwrap_or_default()
    }

    /// `region`'s version GC floor as published (0: never collected, or no region).
    pub fn txn_gc_floor(&self, region: RegionId) -> u64 {
        self.inner.txn.lock().get(&region).map_or(0, |t| t.gc_floor)
    }

    /// A copy of `region`'s whole transaction state (`None`: no such region).
    pub fn txn_table(&self, region: RegionId) -> Option<TxnTable> {
        self.region(region)?;
        Some(self.inner.txn.lock().get(&region).cloned().unwrap_or_default())
    }

    /// The age in ms at `now_ms` of the oldest lock of `region` (by its
    /// `created_at_ms`; 0 if it holds none), read in place under the tables' mutex: no
    /// copy of the table. A lock this binary cannot read (a newer format, damage) has
    /// no age here: it is never made to look old or young by a guess.
    pub fn txn_oldest_lock_age_ms(&self, region: RegionId, now_ms: u64) -> u64 {
        if !self.has_txn_locks() {
            return 0;
        }
        self.with_txn_table(region, |t| {
            t.into_iter()
                .flat_map(|t| t.locks.values())
                .filter_map(|bytes| Lock::decode(bytes).ok())
                .map(|lock| now_ms.saturating_sub(lock.created_at_ms))
                .max()
                .unwrap_or(0)
        })
    }

    /// The published transaction state of `region` (empty if none), read through `f`.
    fn with_txn_table<T>(&self, region: RegionId, f: impl FnOnce(Option<&TxnTable>) -> T) -> T {
        f(self.inner.txn.lock().get(&region))
    }
}

impl ApplyRound<'_> {
    /// The encoded lock on `key` in the current region, this round's changes included.
    pub fn txn_lock(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let region = self.region_of(key)?;
        if let Some(change) = self.overlay(region).and_then(|o| o.locks.get(key)) {
            return Ok(change.clone());
        }
        Ok(self.engine().txn_lock(region, key))
    }

    /// Sets (`Some`) or removes (`None`) the lock on `key` in the current region; the
    /// key must be in the region. Published when the round commits; dropped with it.
    pub fn set_txn_lock(&mut self, key: &[u8], lock: Option<Bytes>) -> Result<()> {
        let more = lock.as_ref().map_or(0, Bytes::len);
        let region = self.check_key(key, more)?;
        self.add_bytes(key.len() + more);
        self.overlay_mut(region).locks.insert(Bytes::copy_from_slice(key), lock);
        Ok(())
    }

    /// The encoded record of `txn_id` at `primary_key` in the current region, this
    /// round's changes included.
    pub fn txn_record(&self, primary_key: &[u8], txn_id: u64) -> Result<Option<Bytes>> {
        let region = self.region_of(primary_key)?;
        let id = (Bytes::copy_from_slice(primary_key), txn_id);
        if let Some(change) = self.overlay(region).and_then(|o| o.records.get(&id)) {
            return Ok(change.clone());
        }
        Ok(self.engine().with_txn_table(region, |t| t?.records.get(&id).cloned()))
    }

    /// Sets or removes a record in the current region (`primary_key` in the region).
    pub fn set_txn_record(
        &mut self,
        primary_key: &[u8],
        txn_id: u64,
        record: Option<Bytes>,
    ) -> Result<()> {
        let more = record.as_ref().map_or(0, Bytes::len);
        let region = self.check_key(primary_key, more)?;
        self.add_bytes(primary_key.len() + more);
        let id = (Bytes::copy_from_slice(primary_key), txn_id);
        self.overlay_mut(region).records.insert(id, record);
        Ok(())
    }

    /// The current region's transaction floor, this round's changes included.
    pub fn txn_floor(&self) -> Result<u64> {
        let region = self.current()?.id;
        let published = self.engine().with_txn_table(region, |t| t.map_or(0, |t| t.floor));
        let raised = self.overlay(region).and_then(|o| o.floor).unwrap_or(0);
        Ok(published.max(raised))
    }

    /// Raises the current region's floor to `floor` (never lowers it).
    pub fn raise_txn_floor(&mut self, floor: u64) -> Result<()> {
        let region = self.current()?.id;
        let overlay = self.overlay_mut(region);
        overlay.floor = Some(overlay.floor.unwrap_or(0).max(floor));
        Ok(())
    }

    /// The current region's version GC floor, this round's changes included.
    pub fn txn_gc_floor(&self) -> Result<u64> {
        let region = self.current()?.id;
        let published = self.engine().txn_gc_floor(region);
        let raised = self.overlay(region).and_then(|o| o.gc_floor).unwrap_or(0);
        Ok(published.max(raised))
    }

    /// Raises the current region's version GC floor to `floor` (never lowers it);
    /// published before the round's data (`Engine::commit_writes`).
    pub fn raise_txn_gc_floor(&mut self, floor: u64) -> Result<()> {
        let region = self.current()?.id;
        let overlay = self.overlay_mut(region);
        overlay.gc_floor = Some(overlay.gc_floor.unwrap_or(0).max(floor));
        Ok(())
    }

    /// This round's changes of `region`'s transaction state, if any.
    fn overlay(&self, region: RegionId) -> Option<&TxnOverlay> {
        self.txn.iter().rev().find(|(id, _)| *id == region).map(|(_, o)| o)
    }

    /// This round's changes of `region`'s transaction state, created empty if none.
    fn overlay_mut(&mut self, region: RegionId) -> &mut TxnOverlay {
        // The current region is the last one prepared: its overlay, if any, is last.
        if self.txn.last().is_none_or(|(id, _)| *id != region) {
            self.txn.push((region, TxnOverlay::default()));
        }
        let last = self.txn.len() - 1;
        &mut self.txn[last].1
    }
}
