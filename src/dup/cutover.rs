//! `Db::fence_duplication` and `Db::cutover_duplication`: the source range stops
//! taking writes, the log up to that point ships, the follower is promoted
//! (ARCHITECTURE.md, "Duplication: verify and cutover").
//!
//! Steps, each resumed from replicated state only (a call after a crash, on any
//! client, picks up where the last one stopped):
//!
//! 1. The directory record moves `Log | Paused -> CuttingOver` (compare and set).
//! 2. The region driver (`driver::region_step`) proposes a `Fence` on every covered
//!    source region's streaming entry: from the fence's index on, the region refuses
//!    client writes to the range (`DupFenced`, at apply on every replica).
//! 3. The shipper ships each region's log up to its fence (and nothing after:
//!    [`shipped`]); the region is done once its `confirmed >= fence`.
//! 4. Once every region is done, the follower's regions are promoted (their sink
//!    entries dropped: writable; again: no-op).
//! 5. The record moves `CuttingOver -> CutOver`. A cutover of a `CutOver` duplication
//!    promotes again (no-op) and reports.

use std::time::{Duration, Instant};

use regionkv_engine::RegionId;
use regionkv_engine::dup::RegionDupState;
use regionkv_raft::directory::{DupRecord, DupStatus};

use super::sink::SinkOf;
use crate::db::Db;
use crate::defaults::DRIVER_RETRY_PAUSE;
use crate::error::{Error, Result};

/// How long a cutover waits for every region to be fenced and shipped.
const CUTOVER_WAIT: Duration = Duration::from_secs(60);

/// True once a fenced entry confirmed its fence: the follower holds every write the
/// region applied to the range.
pub(crate) fn shipped(state: &RegionDupState) -> bool {
    state.fence.as_ref().is_some_and(|f| state.confirmed.is_some_and(|c| c >= f.at_index))
}

/// One source region of a cutover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionCutover {
    /// The source region.
    pub region: RegionId,
    /// The index of its fence (`None`: not fenced yet, or no leader answered).
    pub fenced_at: Option<u64>,
    /// What the follower confirmed of its log.
    pub confirmed: Option<u64>,
    /// The recovery point: entries of the region's log up to its fence that the
    /// follower did not confirm (an upper bound of the writes it misses; 0 once
    /// shipped; `None`: unknown).
    pub rpo_entries: Option<u64>,
}

/// A cutover (or a fence) of one duplication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutoverReport {
    /// The duplication.
    pub dup_id: u64,
    /// Its status after the call.
    pub status: DupStatus,
    /// True once the follower was promoted (writable).
    pub promoted: bool,
    /// Every covered source region, in key order.
    pub regions: Vec<RegionCutover>,
}

impl Db {
    /// Fences a duplication's source range (`Log | Paused -> CuttingOver`, then a
    /// `Fence` on every covered region): client writes to the range are refused
    /// (`DupFenced`) from then on, while the log up to the fence still ships. Waits
    /// until every region holds its fence; the follower is not promoted
    /// ([`Db::cutover_duplication`] goes on from here). Needs cluster version 8.
    pub fn fence_duplication(&self, dup_id: u64) -> Result<CutoverReport> {
        let record = self.begin_cutover(dup_id)?;
        self.wait_regions(&record, |s| s.fence.is_some())?;
        self.cutover_report(&record, false)
    }

    /// Cuts a duplication over to its follower: fences the source range, waits until
    /// every covered region's log up to its fence is confirmed by the follower, then
    /// promotes the follower (writable) and records `CutOver`. Every step resumes from
    /// replicated state: a call after a crash, or on a `CutOver` duplication, goes on
    /// where the last stopped (again: the same report). A source region with no leader
    /// until the deadline fails the call with nothing promoted. The follower must be a
    /// cluster in this process so far. Needs cluster version 8.
    pub fn cutover_duplication(&self, dup_id: u64) -> Result<CutoverReport> {
        let record = self.begin_cutover(dup_id)?;
        let follower = self.follower_of(&record)?;
        if record.status == DupStatus::CuttingOver {
            self.wait_regions(&record, shipped)?;
        }
        let of = SinkOf { dup_id, incarnation: record.incarnation, source_region: 0 };
        follower.sink_promote(of, &record.start, record.end.as_deref())?;
        if record.status == DupStatus::CuttingOver {
            match self.alter_to(dup_id, DupStatus::CuttingOver, DupStatus::CutOver) {
                Ok(()) => {}
                // Another client's cutover recorded it meanwhile.
                Err(_) if self.dup_record(dup_id)?.status == DupStatus::CutOver => {}
                Err(e) => return Err(e),
            }
        }
        let record = self.dup_record(dup_id)?;
        self.cutover_report(&record, true)
    }

    fn alter_to(&self, dup_id: u64, from: DupStatus, to: DupStatus) -> Result<()> {
        let alteration = regionkv_raft::directory::DupAlteration { dup_id, from, to, reason: None };
        self.dup_command(&regionkv_raft::directory::DirCmd::AlterDup(alteration)).map(drop)
    }

    /// Moves the duplication to `CuttingOver` (from `Log` or `Paused`); one cutting or
    /// cut over already is taken as it is. Answers the record.
    fn begin_cutover(&self, dup_id: u64) -> Result<DupRecord> {
        for _ in 0..8 {
            let record = self.dup_record(dup_id)?;
            match record.status {
                DupStatus::CuttingOver | DupStatus::CutOver => return Ok(record),
                DupStatus::Log | DupStatus::Paused => {
                    match self.alter_to(dup_id, record.status, DupStatus::CuttingOver) {
                        Ok(()) => return self.dup_record(dup_id),
                        // The status moved meanwhile (a racing pause, resume or
                        // cutover): read again.
                        Err(Error::Store(regionkv_raft::Error::DupRefused { .. })) => {
                            std::thread::sleep(DRIVER_RETRY_PAUSE);
                        }
                        Err(e) => return Err(e),
                    }
                }
                other => {
                    return Err(Error::InvalidRequest(format!(
                        "duplication {dup_id} is {}: only a duplication that ships its log \
                         (log or paused) cuts over",
                        other.name()
                    )));
                }
            }
        }
        Err(Error::Unavailable {
            waited: Duration::ZERO,
            last: format!("duplication {dup_id}'s status kept moving"),
        })
    }

    /// Waits until every covered region's leader holds an entry of this incarnation
    /// for which `done` holds.
    fn wait_regions(
        &self,
        record: &DupRecord,
        done: impl Fn(&RegionDupState) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let report = self.duplication_status(Some(record.dup_id))?;
            let pending: Vec<RegionId> = report
                .iter()
                .flat_map(|r| &r.regions)
                .filter(|r| {
                    !r.state
                        .as_ref()
                        .is_some_and(|s| s.incarnation == record.incarnation && done(s))
                })
                .map(|r| r.region)
                .collect();
            if pending.is_empty() && report.iter().any(|r| !r.regions.is_empty()) {
                return Ok(());
            }
            if start.elapsed() >= CUTOVER_WAIT {
                return Err(Error::Unavailable {
                    waited: start.elapsed(),
                    last: format!(
                        "duplication {}: regions {pending:?} not fenced and shipped yet \
                         (nothing promoted; call again to resume)",
                        record.dup_id
                    ),
                });
            }
            std::thread::sleep(DRIVER_RETRY_PAUSE * 5);
        }
    }

    fn cutover_report(&self, record: &DupRecord, promoted: bool) -> Result<CutoverReport> {
        let report = self.duplication_status(Some(record.dup_id))?;
        let regions = report
            .iter()
            .flat_map(|r| &r.regions)
            .map(|r| {
                let state = r.state.as_ref();
                let fenced_at = state.and_then(|s| s.fence.as_ref()).map(|f| f.at_index);
                let confirmed = state.and_then(|s| s.confirmed);
                let rpo_entries = fenced_at.zip(confirmed).map(|(f, c)| f.saturating_sub(c));
                RegionCutover { region: r.region, fenced_at, confirmed, rpo_entries }
            })
            .collect();
        Ok(CutoverReport { dup_id: record.dup_id, status: record.status, promoted, regions })
    }
}
