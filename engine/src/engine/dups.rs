//! Each hosted region's duplication state (`crate::dup`), as the Raft layer reads and
//! sets it. Images carry it (`images.rs`); region changes move it (`topology.rs`).

use super::Engine;
use crate::dup::DupTable;
use crate::error::{Error, Result};
use crate::region::RegionId;

impl Engine {
    /// Region `id`'s duplication state (a copy; empty if it takes part in none), if
    /// the region is hosted.
    pub fn dup_table(&self, id: RegionId) -> Option<DupTable> {
        self.region(id)?;
        Some(self.inner.dups.lock().get(&id).cloned().unwrap_or_default())
    }

    /// The duplication whose cutover fence holds one of `keys` in region `id` (client
    /// writes there are refused), if any.
    pub fn fenced_of<'k>(
        &self,
        id: RegionId,
        keys: impl IntoIterator<Item = &'k [u8]>,
    ) -> Option<u64> {
        let dups = self.inner.dups.lock();
        let table = dups.get(&id)?;
        keys.into_iter().find_map(|k| table.fenced_of(k))
    }

    /// The lowest index whose log region `id` must keep after it for its
    /// duplications (`DupTable::floor`); `None` if it takes part in none, or is not
    /// hosted.
    pub fn dup_floor(&self, id: RegionId) -> Option<u64> {
        self.inner.dups.lock().get(&id).and_then(DupTable::floor)
    }

    /// Replaces region `id`'s duplication state (in memory; every image of the region
    /// written from now on carries it). The caller (the thread that applies the
    /// region, between rounds) asserts that it is the state as of the region's applied
    /// index: a checkpoint labels it so.
    pub fn set_dup_table(&self, id: RegionId, table: DupTable) -> Result<()> {
        self.inner.check_usable()?;
        if self.region(id).is_none() {
            return Err(Error::RegionNotFound { region: id });
        }
        let mut dups = self.inner.dups.lock();
        if table.is_empty() {
            dups.remove(&id);
        } else {
            dups.insert(id, table);
        }
        Ok(())
    }
}
