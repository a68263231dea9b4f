//! [`Store`]'s surface for duplication's readers (`crate::dup_source`): called from a
//! shipper's thread, never a poller's. They read what the pollers published (a
//! region's watch), the Raft log (its region lock held only to copy the cache and the
//! entries' places) and checkpoint files; only a seed that needs a new checkpoint asks
//! the region's poller, which writes it between rounds.

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::bounded;
use regionkv_engine::RegionId;

use super::{Msg, Store};
use crate::dup_source::{DupLogBatch, DupSeedImage, SourceWatch, read_log};
use crate::error::{Error, Result};

/// How long a seed waits for the poller's checkpoint.
const CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

impl Store {
    /// The raw-key effects of `region`'s entries `(after, last]`, applied here, read
    /// from this store's Raft log: `last` is at most the applied index (visible in the
    /// engine), and the batch stops at the entry boundary before `max_bytes` of keys
    /// and values would be passed (an entry larger than that alone is returned alone;
    /// an empty batch, `last == after`, means nothing applied after `after` yet).
    ///
    /// Client writes give their puts and deletes, except those apply refused or
    /// skipped (recorded by apply, see `dup_source`); empty entries, membership
    /// changes, admin, directory and `DUP` commands and transaction commands that
    /// write no raw key give none but are covered by `last`.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`] (no replica here), [`Error::NotLeader`];
    /// [`Error::DupLogGap`] if `after + 1` is below the log's first index;
    /// [`Error::DupOutcomeUnknown`] if an entry asked for was applied before this
    /// store restarted; [`Error::DupUnsupportedEntry`] at a transaction commit
    /// (nothing after it is read); a log read failure.
    pub fn dup_read_log(
        &self,
        region: RegionId,
        after: u64,
        max_bytes: usize,
    ) -> Result<DupLogBatch> {
        let (watch, view) = self.leading_source(region)?;
        read_log(&self.ctx.log, &watch, view, region, after, max_bytes)
    }

    /// A consistent image of `region`'s raw keys at an applied index at or after
    /// `min_index`: its latest checkpoint if that is far enough, else one written now
    /// (by the region's poller, between rounds, as a checkpoint due by size is; its log
    /// is compacted as far as its duplication floor allows). The image holds the file
    /// mapped: a later checkpoint or a WAL purge does not take it away.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`], [`Error::NotLeader`], [`Error::Merging`] (a prepared
    /// merge source takes no checkpoint), [`Error::EntryUnavailable`] if `min_index` is
    /// not applied here yet, [`Error::Timeout`], an engine failure.
    pub fn dup_seed_image(&self, region: RegionId, min_index: u64) -> Result<DupSeedImage> {
        self.leading_source(region)?;
        let engine = self.ctx.engine_of(region);
        // A split or merge between the checkpoint and the look leaves no whole image of
        // the region for a moment: ask again.
        for _ in 0..3 {
            let latest = engine.latest_checkpoint(region).map_err(|e| match e {
                regionkv_engine::Error::RegionNotFound { .. } => Error::RegionNotFound { region },
                e => e.into(),
            })?;
            if let Some(file) = latest.filter(|f| f.header().applied_index >= min_index) {
                return Ok(DupSeedImage::new(file));
            }
            let (tx, rx) = bounded(1);
            self.send(region, Msg::DupCheckpoint(region, min_index, tx))?;
            rx.recv_timeout(CHECKPOINT_WAIT).map_err(|_| Error::Timeout { region })??;
        }
        Err(Error::Timeout { region })
    }

    /// `region`'s data as of its applied index on this store's replica, pinned, with
    /// its duplication and sink state as of the same index (duplication's verify:
    /// `crate::dup_fingerprint`). Asks the region's poller, which answers between
    /// rounds.
    ///
    /// # Errors
    /// [`Error::RegionNotFound`] (no initialized replica here), [`Error::Cancelled`],
    /// [`Error::Timeout`] if the poller does not answer.
    pub fn region_view(&self, region: RegionId) -> Result<crate::dup_fingerprint::RegionView> {
        let (tx, rx) = bounded(1);
        self.send(region, Msg::RegionView(region, tx))?;
        rx.recv_timeout(CHECKPOINT_WAIT).map_err(|_| Error::Timeout { region })?
    }

    /// [`Store::region_view`] fingerprinted over each of `ranges` (cut to the region),
    /// on the caller's thread.
    ///
    /// # Errors
    /// As [`Store::region_view`].
    pub fn range_fingerprint(
        &self,
        region: RegionId,
        ranges: &[crate::dup_fingerprint::KeyRange],
    ) -> Result<crate::dup_fingerprint::RegionFingerprint> {
        Ok(self.region_view(region)?.fingerprinted(ranges))
    }

    /// `region`'s applied index (visible in the engine) as soon as it is above
    /// `above`: at once if it is, else when the poller publishes it (woken, no
    /// polling); `None` at `timeout`, or if the replica here is destroyed meanwhile.
    pub fn wait_applied(&self, region: RegionId, above: u64, timeout: Duration) -> Option<u64> {
        self.ctx.sources.get_or_create(region).wait_above(above, timeout)
    }

    /// The region's watch and its state, if this store's replica leads the region.
    fn leading_source(
        &self,
        region: RegionId,
    ) -> Result<(Arc<SourceWatch>, crate::dup_source::WatchView)> {
        if self.ctx.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let watch = self.ctx.sources.get(region).ok_or(Error::RegionNotFound { region })?;
        let view = watch.view();
        if view.gone {
            return Err(Error::RegionNotFound { region });
        }
        if !view.leader {
            return Err(Error::NotLeader { region, leader: None });
        }
        Ok((watch, view))
    }
}
