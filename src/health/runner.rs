//! Runs the health monitor next to the directory's leader, in a [`Cluster`] or a
//! [`Node`]: every interval it collects every store's status report, evaluates, and
//! carries out the repairs planned (unless in dry run), each through the cluster
//! driver's membership changes (`control/membership.rs`).
//!
//! One monitor acts: only the process whose store leads the directory's group runs
//! the turn. Each repair is first recorded in the directory (`DirCmd::RecordHealth`,
//! a command kind of cluster version 2): only the directory's current leader can get
//! that applied, so a monitor that lost the directory stops there (the fence), and a
//! new monitor leaves alone the regions another one recorded (`note_other_monitors`).
//! Every step is then an ordinary membership change carrying the region's epoch, so a
//! step decided on a view that another change made stale is refused (`EpochNotMatch`)
//! and analysed again next turn. Before acting, the reports are collected again and
//! the plan is made again: only repairs planned on both views run ("re-check just
//! before acting"). A learner an interrupted replacement left is promoted.
//!
//! [`Cluster`]: crate::Cluster
//! [`Node`]: crate::Node

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use regionkv_engine::StoreId;
use regionkv_raft::directory::RegionRecord;
use regionkv_wal::CancellationToken;

use regionkv_raft::directory::{DirCmd, HealthEvent};

use super::{HealthConfig, HealthReport, Liveness, Monitor, PlannedRepair, RepairKind};

/// How long recording a repair step in the directory keeps trying.
const RECORD_DEADLINE: Duration = Duration::from_secs(2);
use crate::control::ClusterOps;
use crate::error::{Error, Result};
use crate::proto::StoreStatus;

/// What the runner needs from the process it runs in.
pub(crate) trait HealthHost: Send + Sync {
    /// The store of this process that leads the directory's group, if one does.
    fn directory_leader(&self) -> Option<StoreId>;
    /// True while a store of this process leads the directory's group.
    fn leads_directory(&self) -> bool {
        self.directory_leader().is_some()
    }
    /// The health events the directory holds (every monitor's, oldest first).
    fn health_events(&self) -> Vec<(u64, HealthEvent)>;
    /// Every store's status report that can be had now (a store that does not answer
    /// is left out: the monitor's clock decides when it is down).
    fn collect(&self) -> Vec<StoreStatus>;
    /// The directory's region records.
    fn directory(&self) -> Vec<RegionRecord>;
    /// Runs `f` with the cluster driver (if the process still runs).
    fn run_ops(&self, f: &mut dyn FnMut(&ClusterOps));
}

/// The monitor and its thread's state, shared with the facade's `health()` calls.
pub(crate) struct HealthRunner {
    monitor: Mutex<Monitor>,
    started: Instant,
    /// True while this process ran the last turn (it leads the directory).
    active: Mutex<bool>,
    /// The highest directory health event taken into account.
    events_seen: Mutex<u64>,
}

impl HealthRunner {
    pub fn new(config: HealthConfig) -> Arc<HealthRunner> {
        Arc::new(HealthRunner {
            monitor: Mutex::new(Monitor::new(config)),
            started: Instant::now(),
            active: Mutex::new(false),
            events_seen: Mutex::new(0),
        })
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// The last evaluation, if this process runs the monitor (it leads the directory).
    pub fn report(&self) -> Option<HealthReport> {
        (*self.active.lock()).then(|| self.monitor.lock().last().clone())
    }

    /// The audit ring, if this process runs the monitor.
    pub fn audit(&self) -> Option<Vec<super::AuditEntry>> {
        (*self.active.lock()).then(|| self.monitor.lock().audit())
    }

    /// Changes the monitor's settings.
    pub fn configure(&self, f: impl FnOnce(&mut HealthConfig)) {
        f(self.monitor.lock().config_mut());
    }

    /// The interval between turns.
    pub fn interval(&self) -> Duration {
        self.monitor.lock().config().interval
    }

    /// Runs turns until `cancel` is cancelled.
    pub fn run(&self, host: &dyn HealthHost, cancel: &CancellationToken) {
        // Bounded: ends when cancelled; every turn waits an interval.
        while !cancel.wait_timeout(self.interval()) {
            self.turn(host, cancel);
        }
    }

    /// One turn: collect, evaluate, re-check, repair.
    pub fn turn(&self, host: &dyn HealthHost, cancel: &CancellationToken) {
        let Some(holder) = host.directory_leader() else {
            *self.active.lock() = false;
            return;
        };
        *self.active.lock() = true;
        self.note_other_monitors(host, holder);
        let planned = self.evaluate(host).planned;
        if planned.is_empty() || self.monitor.lock().config().dry_run {
            return;
        }
        // Re-check on fresh reports: only what both plans hold runs.
        let again: BTreeSet<PlannedRepair> = self.evaluate(host).planned.into_iter().collect();
        for repair in planned.into_iter().filter(|r| again.contains(r)) {
            if cancel.is_cancelled() {
                return;
            }
            // The fence: the step is recorded in the directory first, which only its
            // leader can do. A monitor that lost the directory stops here.
            match Self::record(host, holder, &repair, "started".into()) {
                Ok(()) => {}
                Err(e) if feature_not_active(&e) => {
                    if self.monitor.lock().repairs_deferred() {
                        tracing::info!(
                            "health: repairs wait for cluster version 2 (finalize the upgrade); \
                             analyses are reported meanwhile"
                        );
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(error = %e, "health: a repair not recorded in the directory is not taken");
                    return;
                }
            }
            self.monitor.lock().repair_started(self.now(), &repair);
            tracing::warn!(kind = repair.kind.name(), region = repair.region.0, reason = repair.reason.name(), remove = ?repair.remove, "health: repairing");
            let result = self.carry_out(host, &repair).map_err(|e| e.to_string());
            match &result {
                Ok(what) => tracing::warn!(
                    kind = repair.kind.name(),
                    region = repair.region.0,
                    what,
                    "health: repaired"
                ),
                Err(why) => tracing::warn!(
                    kind = repair.kind.name(),
                    region = repair.region.0,
                    why,
                    "health: repair failed"
                ),
            }
            let event = match &result {
                Ok(what) => format!("done: {what}"),
                Err(why) => format!("failed: {why}"),
            };
            if let Err(e) = Self::record(host, holder, &repair, event) {
                tracing::info!(error = %e, "health: the end of a repair was not recorded in the directory");
            }
            self.monitor.lock().repair_finished(self.now(), &repair, result);
        }
    }

    /// Records one step of `repair` in the directory's health events.
    fn record(
        host: &dyn HealthHost,
        holder: StoreId,
        repair: &PlannedRepair,
        event: String,
    ) -> Result<()> {
        let cmd = DirCmd::RecordHealth {
            event: Box::new(HealthEvent {
                holder,
                region: repair.region,
                kind: repair.kind.name().into(),
                reason: repair.reason.name().into(),
                event,
                remove: repair.remove,
                add: None,
            }),
        };
        let mut result = Err(Error::Shutdown);
        host.run_ops(&mut |ops| result = ops.directory(&cmd, RECORD_DEADLINE).map(drop));
        result
    }

    /// Regions another monitor (an earlier directory leader) repairs, or repaired
    /// lately, are not repaired again within the block.
    fn note_other_monitors(&self, host: &dyn HealthHost, holder: StoreId) {
        let events = host.health_events();
        let mut seen = self.events_seen.lock();
        let now = self.now();
        let mut monitor = self.monitor.lock();
        for (seq, e) in events {
            if seq <= *seen {
                continue;
            }
            *seen = seq;
            if e.holder != holder {
                monitor.block_region(e.region, now);
            }
        }
    }

    fn evaluate(&self, host: &dyn HealthHost) -> HealthReport {
        let reports = host.collect();
        let records = host.directory();
        let now = self.now();
        let mut monitor = self.monitor.lock();
        for status in reports {
            monitor.observe(super::convert::observed(&status, now));
        }
        monitor.evaluate(now, &records)
    }

    fn carry_out(&self, host: &dyn HealthHost, repair: &PlannedRepair) -> Result<String> {
        let mut result = Err(Error::Shutdown);
        host.run_ops(&mut |ops| result = self.carry_out_with(host, ops, repair));
        result
    }

    fn carry_out_with(
        &self,
        host: &dyn HealthHost,
        ops: &ClusterOps,
        repair: &PlannedRepair,
    ) -> Result<String> {
        let region = repair.region;
        // One collection for the whole repair (over TCP for a `Node`).
        let statuses = host.collect();
        let current = host
            .directory()
            .into_iter()
            .map(|r| r.region)
            .chain(statuses.iter().flat_map(|s| &s.peers).map(|p| p.region.clone()))
            .filter(|r| r.id == region)
            .max_by_key(|r| (r.epoch.version, r.epoch.conf_ver))
            .ok_or_else(|| Error::InvalidRequest(format!("region {region} is not known")))?;
        match repair.kind {
            RepairKind::WakeRegion => {
                ops.wake_region(&current);
                Ok(format!("sent a request to each of {} replicas", current.peers.len()))
            }
            RepairKind::ReplaceReplica | RepairKind::AddReplica => {
                // A learner an earlier attempt added (a monitor that stopped between
                // its steps) is promoted, not joined by another peer.
                let learner = statuses.iter().find_map(|s| {
                    s.peers
                        .iter()
                        .any(|p| p.region.id == region && p.is_learner == Some(true))
                        .then_some(s.store)
                });
                let target = match learner {
                    Some(store) => store,
                    None => self.target(&current.peers.iter().map(|p| p.store).collect())?,
                };
                let still = || host.leads_directory();
                let region = ops.replace_in_region(region, repair.remove, Some(target), &still)?;
                Ok(format!(
                    "a replica on store {target}; the region is now at epoch {}",
                    region.epoch
                ))
            }
            RepairKind::RemoveReplica => {
                let monitor = self.monitor.lock();
                let last = monitor.last();
                // A peer on a down store first, else on the store with most replicas.
                let down: Option<StoreId> = current.peers.iter().map(|p| p.store).find(|s| {
                    last.stores
                        .iter()
                        .any(|h| h.store == *s && matches!(h.liveness, Liveness::Down { .. }))
                });
                let leader = statuses
                    .iter()
                    .find(|s| {
                        s.peers.iter().any(|p| {
                            p.region.id == region && p.role == regionkv_raft::StateRole::Leader
                        })
                    })
                    .map(|s| s.store);
                let fullest = current
                    .peers
                    .iter()
                    .map(|p| p.store)
                    .filter(|s| Some(*s) != leader)
                    .max_by_key(|s| {
                        last.stores.iter().find(|h| h.store == *s).map_or(0, |h| h.replicas)
                    });
                drop(monitor);
                let Some(victim) = down.or(fullest) else {
                    return Err(Error::InvalidRequest("no peer can be removed".into()));
                };
                let still = || host.leads_directory();
                let region = ops.replace_in_region(region, Some(victim), None, &still)?;
                Ok(format!(
                    "removed store {victim}'s peer; the region is now at epoch {}",
                    region.epoch
                ))
            }
        }
    }

    /// A live, serving store outside `taken` with the fewest replicas.
    fn target(&self, taken: &BTreeSet<StoreId>) -> Result<StoreId> {
        let monitor = self.monitor.lock();
        monitor
            .last()
            .stores
            .iter()
            .filter(|h| h.liveness == Liveness::Up && !taken.contains(&h.store))
            .filter(|h| !matches!(h.report, Some((_, _, Some(s))) if s != super::StoreLifecycle::Serving))
            .min_by_key(|h| (h.replicas, h.store))
            .map(|h| h.store)
            .ok_or_else(|| {
                Error::InvalidRequest(
                    "no live store without a replica of the region to place one on".into(),
                )
            })
    }
}

/// True if `e` says the cluster version does not allow the command yet.
fn feature_not_active(e: &Error) -> bool {
    matches!(
        e,
        Error::FeatureNotActive { .. }
            | Error::Store(regionkv_raft::Error::FeatureNotActive { .. })
    )
}
