//! Where a region meets the read timestamp of a snapshot read (`Query::read_ts`, sent
//! by `Transaction::get`/`scan` as its start timestamp): [`admit`] is called for every
//! read that carries one, on both paths that serve reads (the poller's
//! `serve_reads` and the caller-thread `LocalReads::serve`), AFTER the read's view of
//! the engine was taken, and before it is answered. A raw read (`read_ts: None`)
//! never comes here: its cost is unchanged.
//!
//! Why after the view: a region's version GC raises its floor in a round published
//! before the data of any round that deletes versions below it; so if the view holds
//! a deletion, the floor read after it is at least the one the deletion was made
//! under, and a read below it is refused rather than answered from a collected
//! history.

use regionkv_engine::{Engine, RegionId};

use crate::error::{Error, Result};

/// Admits a snapshot read of `region` at `read_ts`, or refuses it: below the
/// region's version GC floor it is `SnapshotTooOld` (what it would read may be gone).
pub(crate) fn admit(engine: &Engine, region: RegionId, read_ts: u64) -> Result<()> {
    let floor = engine.txn_gc_floor(region);
    if read_ts < floor {
        return Err(Error::SnapshotTooOld { read_ts, floor });
    }
    Ok(())
}
