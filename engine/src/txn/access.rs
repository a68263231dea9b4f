//! How the apply thread and readers reach a region's transaction tables: through the
//! write-batch round (changes, published when it commits) and the engine (reads).

use bytes::Bytes;

use crate::engine::Engine;
use crate::error::Result;
use crate::region::RegionId;
use crate::round::ApplyRound;

use super::TxnTable;

impl Engine {
    /// True if any region of this store holds a lock: a read that finds none skips
    /// every lock lookup (one atomic load).
    pub fn has_txn_locks(&self) -> bool {
        unimplemented!("txn-engine")
    }

    /// The encoded lock on `key` in `region`, as published (after the last committed
    /// round that changed it).
    pub fn txn_lock(&self, region: RegionId, key: &[u8]) -> Option<Bytes> {
        let _ = (region, key);
        unimplemented!("txn-engine")
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
        let _ = (region, start, end, limit);
        unimplemented!("txn-engine")
    }

    /// A copy of `region`'s whole transaction state (`None`: no such region).
    pub fn txn_table(&self, region: RegionId) -> Option<TxnTable> {
        let _ = region;
        unimplemented!("txn-engine")
    }
}

impl ApplyRound<'_> {
    /// The encoded lock on `key` in the current region, this round's changes included.
    pub fn txn_lock(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let _ = key;
        unimplemented!("txn-engine")
    }

    /// Sets (`Some`) or removes (`None`) the lock on `key` in the current region; the
    /// key must be in the region. Published when the round commits; dropped with it.
    pub fn set_txn_lock(&mut self, key: &[u8], lock: Option<Bytes>) -> Result<()> {
        let _ = (key, lock);
        unimplemented!("txn-engine")
    }

    /// The encoded record of `txn_id` at `primary_key` in the current region, this
    /// round's changes included.
    pub fn txn_record(&self, primary_key: &[u8], txn_id: u64) -> Result<Option<Bytes>> {
        let _ = (primary_key, txn_id);
        unimplemented!("txn-engine")
    }

    /// Sets or removes a record in the current region (`primary_key` in the region).
    pub fn set_txn_record(
        &mut self,
        primary_key: &[u8],
        txn_id: u64,
        record: Option<Bytes>,
    ) -> Result<()> {
        let _ = (primary_key, txn_id, record);
        unimplemented!("txn-engine")
    }

    /// The current region's transaction floor, this round's changes included.
    pub fn txn_floor(&self) -> Result<u64> {
        unimplemented!("txn-engine")
    }

    /// Raises the current region's floor to `floor` (never lowers it).
    pub fn raise_txn_floor(&mut self, floor: u64) -> Result<()> {
        let _ = floor;
        unimplemented!("txn-engine")
    }
}
