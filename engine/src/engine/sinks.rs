//! Each hosted region's sink state (`crate::sink`), as the Raft layer reads and sets
//! it. Images carry it (`images.rs`); region changes move it (`topology.rs`).

use std::sync::atomic::Ordering;

use super::{Engine, Inner};
use crate::IdHashMap;
use crate::error::{Error, Result};
use crate::region::RegionId;
use crate::sink::SinkTable;

impl Engine {
    /// Region `id`'s sink state (a copy; empty if it sinks nothing), if the region is
    /// hosted.
    pub fn sink_table(&self, id: RegionId) -> Option<SinkTable> {
        self.region(id)?;
        Some(self.inner.sinks.lock().get(&id).cloned().unwrap_or_default())
    }

    /// The duplication whose sink holds one of `keys` in region `id` (a read-only
    /// standby: client writes there are refused), if any. Looks nothing up while no
    /// region of the store sinks anything.
    pub fn standby_of<'k>(
        &self,
        id: RegionId,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Option<u64> {
        if self.inner.sink_regions.load(Ordering::Acquire) == 0 {
            return None;
        }
        let sinks = self.inner.sinks.lock();
        let table = sinks.get(&id)?;
        keys.into_iter().find_map(|k| table.standby_of(k))
    }

    /// Replaces region `id`'s sink state (in memory; every image of the region
    /// written from now on carries it). The caller (the thread that applies the
    /// region, between rounds, after the round holding the data the state describes
    /// committed) asserts that it is the state as of the region's applied index.
    pub fn set_sink_table(&self, id: RegionId, table: SinkTable) -> Result<()> {
        self.inner.check_usable()?;
        if self.region(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        self.inner.with_sinks(|sinks| put(sinks, id, table));
        Ok(())
    }
}

impl Inner {
    /// Runs `f` on the sink tables, and recounts the regions that have one.
    pub(crate) fn with_sinks<T>(
        &self,
        f: impl FnOnce(&mut IdHashMap<RegionId, SinkTable>) -> T,
    ) -> T {
        let mut sinks = self.sinks.lock();
        let out = f(&mut sinks);
        self.sink_regions.store(sinks.len() as u64, Ordering::Release);
        out
    }
}

/// Sets `id`'s table in `sinks` (an empty one: absent).
pub(crate) fn put(sinks: &mut IdHashMap<RegionId, SinkTable>, id: RegionId, table: SinkTable) {
    if table.is_empty() {
        sinks.remove(&id);
    } else {
        sinks.insert(id, table);
    }
}
