//! Reading a region's entries off the thread that owns the region (duplication's log
//! reader, `crate::dup_source`): the region's mutex is held only to copy what the
//! cache holds and where the rest is; the WAL is read after it is released, so the
//! poller, which stages into the same log, never waits for a disk read.

use bytes::Bytes;
use raft::eraftpb::Entry;
use regionkv_engine::RegionId;
use regionkv_wal::Lsn;

use super::RaftLog;
use super::batch::{self, EntrySpan};
use super::region::Location;
use crate::error::{Error, Result};

/// Where one entry was found under the lock.
enum Found {
    Cached(Entry),
    Durable { index: u64, lsn: Lsn, span: EntrySpan },
}

impl RaftLog {
    /// Entries `[low, high)` of `region`, read without holding the region's log while
    /// the WAL is read. [`Error::Compacted`] if `low` is below the log's first index,
    /// or if a record holding one of them was purged meanwhile (the log was compacted
    /// past it after the lock was released); [`Error::EntryUnavailable`] past its end.
    /// The caller asks only for entries that cannot be overwritten (committed ones).
    pub(crate) fn entries_detached(
        &self,
        region: RegionId,
        low: u64,
        high: u64,
    ) -> Result<Vec<Entry>> {
        let found = {
            let handle = self.handle(region)?;
            let log = handle.lock()?;
            if low < log.first_index() {
                return Err(Error::Compacted { region, index: low });
            }
            if high > log.last_index() + 1 {
                return Err(Error::EntryUnavailable { region, index: high - 1 });
            }
            let mut found = Vec::with_capacity(usize::try_from(high - low).unwrap_or(0));
            for index in low..high {
                let slot = log.slot(index).expect("checked against the log's bounds");
                found.push(match (&slot.cached, slot.location) {
                    (Some(e), _) => Found::Cached(e.clone()),
                    (None, Location::Durable { lsn, span }) => Found::Durable { index, lsn, span },
                    (None, Location::Pending { .. }) => {
                        unreachable!("pending entries are always cached")
                    }
                });
            }
            found
        };
        let mut out = Vec::with_capacity(found.len());
        let mut record: Option<(Lsn, Bytes)> = None;
        for f in found {
            let (index, lsn, span) = match f {
                Found::Cached(e) => {
                    out.push(e);
                    continue;
                }
                Found::Durable { index, lsn, span } => (index, lsn, span),
            };
            if record.as_ref().is_none_or(|(l, _)| *l != lsn) {
                match self.wal.read(lsn) {
                    Ok(r) => record = Some((lsn, r.payload)),
                    // Purged since the lock was released: only a compaction past the
                    // entry allows that.
                    Err(e) => {
                        let first = self.bounds(region).map(|(first, _)| first)?;
                        if first > index {
                            return Err(Error::Compacted { region, index });
                        }
                        return Err(e.into());
                    }
                }
            }
            let payload = &record.as_ref().expect("read above").1;
            out.push(batch::entry_at(payload, span, index).map_err(|e| Error::LogCorruption {
                lsn,
                reason: format!(
                    "entry {index} of region {}: {} at byte {}",
                    region.0, e.reason, e.offset
                ),
            })?);
        }
        Ok(out)
    }
}
