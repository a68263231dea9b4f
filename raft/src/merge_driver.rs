//! Driving a merge across two regions, for whoever schedules one (the API, the
//! automatic merger, a restart that finds a merge half done).
//!
//! A merge is three admin commands in two Raft groups (`TiKV`'s shape):
//!
//! 1. `PrepareMerge` on the source: from its index on the source takes no writes; its
//!    leader reports when every replica's log holds the command (`all_matched`).
//! 2. `CommitMerge` on the target, carrying the source as prepared and the prepare
//!    command's index and term. Each target replica waits until the source replica on
//!    its store has applied that far (committing it locally if it must: the commit
//!    merge proves it committed), then takes over the source's range.
//! 3. Or `RollbackMerge` on the source, when the commit can no longer apply: the
//!    target's epoch moved (a split or membership change), or the source's replicas did
//!    not all get the prepare command in time.
//!
//! A rollback must never race a commit that could still apply: [`finish_merge`]
//! rolls back only after a commit merge was refused *when applied* for a stale target
//! epoch (then no commit merge proposed with that epoch, or an older one, can ever
//! apply) and the target is seen not to cover the source, or before any commit merge
//! was proposed. One driver per merge at a time: callers serialize.

use std::time::Duration;

use regionkv_engine::{Epoch, MergeState, Region, RegionId};

use crate::command::AdminCmd;
use crate::error::{Error, MergeAbortReason, Result};
use crate::request::{AdminResult, MergeStatus};

/// What a merge driver needs from the cluster: requests to region leaders, and time.
/// Implementations find the leader and retry routing errors themselves, within a
/// bounded time, and return the last error when they give up.
pub trait RegionAdmin {
    /// Proposes `cmd` to the leader of `region`, routed with `epoch`; waits for it to
    /// apply (or be refused).
    fn admin(&mut self, region: RegionId, epoch: Epoch, cmd: AdminCmd) -> Result<AdminResult>;
    /// The merge status of `region` from its leader.
    fn merge_status(&mut self, region: RegionId) -> Result<MergeStatus>;
    /// Waits a little before trying again.
    fn pause(&mut self, duration: Duration);
    /// Time elapsed since some fixed point (for deadlines).
    fn elapsed(&mut self) -> Duration;
}

/// How long a merge may take before it is rolled back.
#[derive(Clone, Copy, Debug)]
pub struct MergeOptions {
    /// How long every source replica may take to get the prepare command.
    pub match_timeout: Duration,
    /// How long the commit may keep failing for routing reasons.
    pub commit_timeout: Duration,
    /// Wait between polls.
    pub poll: Duration,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            match_timeout: Duration::from_secs(10),
            commit_timeout: Duration::from_secs(30),
            poll: Duration::from_millis(10),
        }
    }
}

/// Merges `source` into its neighbour `target` (same stores). Returns the grown
/// target. If a merge of `source` into `target` is already prepared, it is finished.
pub fn merge(
    admin: &mut impl RegionAdmin,
    source: RegionId,
    target: RegionId,
    options: MergeOptions,
) -> Result<Region> {
    let target_region = admin.merge_status(target)?.region;
    let status = admin.merge_status(source)?;
    let (prepared, merge) = match status.merge {
        Some(m) if m.target == target => (status.region, m),
        Some(m) => return Err(Error::Merging { region: source, target: m.target }),
        None => {
            let cmd = AdminCmd::PrepareMerge { target: target_region };
            match admin.admin(source, status.region.epoch, cmd)? {
                AdminResult::Prepared { source: region, prepare_index, prepare_term } => {
                    (region, MergeState { target, prepare_index, prepare_term })
                }
                other => {
                    return Err(Error::Internal(format!("prepare merge answered {other:?}")));
                }
            }
        }
    };
    finish_merge(admin, &prepared, merge, options)
}

/// Finishes a prepared merge of `source` (as its prepare left it): commits it on the
/// target, or rolls it back. Used by [`merge`] and to resume a merge found prepared
/// (after a crash of its driver).
pub fn finish_merge(
    admin: &mut impl RegionAdmin,
    source: &Region,
    merge: MergeState,
    options: MergeOptions,
) -> Result<Region> {
    let start = admin.elapsed();
    // 1. Every source replica's log must hold the prepare command, so that each can
    //    apply it even if the source's group is gone by then.
    loop {
        // Done already? (A driver that resumes a merge may find it committed, and the
        // source's replicas gone.)
        let target = admin.merge_status(merge.target)?.region;
        if covers(&target, source) {
            return Ok(target);
        }
        match admin.merge_status(source.id) {
            Ok(s) if s.merge != Some(merge) => {
                return Err(Error::InvalidRequest(format!(
                    "region {} is no longer prepared to merge into {}",
                    source.id, merge.target
                )));
            }
            Ok(s) if s.all_matched => break,
            Ok(_) => {}
            Err(e) if e.is_retryable() => {}
            Err(e) => return Err(e),
        }
        if admin.elapsed().saturating_sub(start) > options.match_timeout {
            rollback(admin, source, merge)?;
            return Err(Error::MergeAborted {
                region: source.id,
                reason: MergeAbortReason::PrepareNotReplicated,
            });
        }
        admin.pause(options.poll);
    }
    // 2. Commit on the target, at the target's current epoch.
    let start = admin.elapsed();
    loop {
        let target = admin.merge_status(merge.target)?.region;
        if covers(&target, source) {
            return Ok(target);
        }
        let cmd = AdminCmd::CommitMerge {
            source: source.clone(),
            prepare_index: merge.prepare_index,
            prepare_term: merge.prepare_term,
        };
        match admin.admin(merge.target, target.epoch, cmd) {
            Ok(AdminResult::Merged(region)) => return Ok(region),
            Ok(other) => {
                return Err(Error::Internal(format!("commit merge answered {other:?}")));
            }
            Err(Error::EpochNotMatch { .. } | Error::InvalidRequest(_)) => {
                // Refused for good at this epoch; no commit merge routed with it (or an
                // older one) can apply any more. Merged by an earlier attempt, or never.
                let target = admin.merge_status(merge.target)?.region;
                if covers(&target, source) {
                    return Ok(target);
                }
                rollback(admin, source, merge)?;
                return Err(Error::MergeAborted {
                    region: source.id,
                    reason: MergeAbortReason::TargetChanged,
                });
            }
            Err(e @ Error::DuplicationSeeding { .. }) => {
                // The target (or the source) takes part in a duplication that is
                // preparing or seeding: not now. The source takes writes again.
                rollback(admin, source, merge)?;
                return Err(e);
            }
            Err(e) if e.is_retryable() || matches!(e, Error::Timeout { .. }) => {
                if admin.elapsed().saturating_sub(start) > options.commit_timeout {
                    return Err(e);
                }
                admin.pause(options.poll);
            }
            Err(e) => return Err(e),
        }
    }
}

fn rollback(admin: &mut impl RegionAdmin, source: &Region, merge: MergeState) -> Result<()> {
    let cmd = AdminCmd::RollbackMerge { prepare_index: merge.prepare_index };
    match admin.admin(source.id, source.epoch, cmd) {
        // Refused as invalid: rolled back already (a retried rollback).
        Ok(_) | Err(Error::InvalidRequest(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// True if `target` now spans `source`'s range.
fn covers(target: &Region, source: &Region) -> bool {
    target.start <= source.start
        && match (&target.end, &source.end) {
            (None, _) => true,
            (Some(t), Some(s)) => t >= s,
            (Some(_), None) => false,
        }
}
