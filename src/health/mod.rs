//! The health monitor: it reads every store's status report, runs the analysis table
//! (`analysis.rs`) over them, and plans the repairs that the analyses that matched ask
//! for, under rules that make a wrong repair structurally hard:
//!
//! - an analysis whose fields were not all positively reported, or whose stores speak
//!   an older status schema than it needs, concludes nothing (`InsufficientInfo`:
//!   counted, shown, never repaired — invariant 5 in ARCHITECTURE.md);
//! - a problem must last its analysis's hold time before it is reported or repaired;
//! - one repair per region at a time, and none within `repair_block` of the last one
//!   (no flapping); none on a region with a Critical problem; a detect-only switch per
//!   repair kind, and a dry-run mode that plans without acting;
//! - a store is declared dead only when it has been silent to the monitor for the dead
//!   timeout *and* the leaders of its regions on other stores no longer hear from it
//!   (a monitor cut off from one store never replaces it);
//! - every repair is written to the audit ring before its first step.
//!
//! The monitor is pure: it is given reports and the time (its own receive clock), so
//! the simulator drives it with virtual time (`matrix_tests.rs`). Who collects the
//! reports and carries out the repairs is `runner.rs`.

mod analysis;
mod convert;
mod evaluate;
mod observed;
mod runner;

#[cfg(test)]
mod matrix_tests;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

pub use analysis::{
    AnalysisCode, AnalysisDef, FieldId, Liveness, Priority, RegionFacts, RepairKind, Scope, TABLE,
    Unknown,
};
pub use evaluate::{Outcome, Subject};
pub use observed::{
    ObservedProgress, ObservedReplica, ObservedStore, ReplicationState, Role, StoreLifecycle,
    TimelineHealth,
};

pub(crate) use runner::{HealthHost, HealthRunner};

use regionkv_engine::{Region, RegionId, StoreId};
use regionkv_raft::directory::RegionRecord;

/// How the monitor judges and repairs. Every duration is by the monitor's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// Voters each region should have.
    pub replication_factor: usize,
    /// How often the monitor collects reports and evaluates.
    pub interval: Duration,
    /// A store silent this long is down.
    pub store_down_after: Duration,
    /// A store down this long (and corroborated) is dead: its replicas are replaced.
    pub store_dead_after: Duration,
    /// A leader's store that has not heard from a follower's store for more ticks than
    /// this counts as not hearing it (corroborating that the follower's store is dead).
    pub silent_ticks: u64,
    /// A region without a leader this long is woken.
    pub no_leader_after: Duration,
    /// A region under- or over-replicated this long is repaired.
    pub under_replicated_after: Duration,
    /// A pending or lagging replica is reported after this long.
    pub pending_after: Duration,
    /// A replica this many entries behind its leader's commit lags.
    pub lag_entries: u64,
    /// Stores on different binaries this long are reported.
    pub version_skew_after: Duration,
    /// A leader's transaction lock older than this is reported (`TxnInDoubtOld`).
    pub txn_lock_old_after: Duration,
    /// No repair of a region within this long of its last one.
    pub repair_block: Duration,
    /// The most repairs planned in one turn.
    pub max_repairs_per_turn: usize,
    /// Repair kinds that only detect (their analyses are reported, nothing is done).
    pub detect_only: BTreeSet<RepairKind>,
    /// Plan repairs and report them, but carry none out.
    pub dry_run: bool,
    /// Stores in maintenance until the given monitor time: never declared dead.
    pub maintenance: BTreeMap<StoreId, Duration>,
}

impl Default for HealthConfig {
    fn default() -> HealthConfig {
        HealthConfig {
            replication_factor: 3,
            interval: Duration::from_secs(1),
            store_down_after: Duration::from_secs(30),
            store_dead_after: Duration::from_secs(300),
            silent_ticks: 2 * regionkv_raft::StoreConfig::DEFAULT_ELECTION_TICKS as u64,
            no_leader_after: Duration::from_secs(3),
            under_replicated_after: Duration::from_secs(30),
            pending_after: Duration::from_secs(60),
            lag_entries: 10_000,
            version_skew_after: Duration::from_secs(3600),
            txn_lock_old_after: Duration::from_secs(60),
            repair_block: Duration::from_secs(300),
            max_repairs_per_turn: 64,
            detect_only: BTreeSet::new(),
            dry_run: false,
            maintenance: BTreeMap::new(),
        }
    }
}

/// A problem an analysis found, that lasted its hold time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The analysis.
    pub code: AnalysisCode,
    /// How urgent.
    pub priority: Priority,
    /// What it is about.
    pub subject: Subject,
    /// What the analysis saw.
    pub detail: String,
    /// When it was first seen (monitor clock).
    pub since: Duration,
}

/// One repair step the monitor plans (and the runner carries out).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PlannedRepair {
    /// What to do.
    pub kind: RepairKind,
    /// The region.
    pub region: RegionId,
    /// The analysis that asked for it.
    pub reason: AnalysisCode,
    /// For `ReplaceReplica` and `RemoveReplica`: the store whose peer goes.
    pub remove: Option<StoreId>,
}

/// An analysis that could not conclude.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insufficient {
    /// The analysis.
    pub code: AnalysisCode,
    /// What it is about.
    pub subject: Subject,
    /// The field it missed, and which store did not report it.
    pub missing: Unknown,
}

/// What the monitor knows of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreHealth {
    /// The store.
    pub store: StoreId,
    /// Up or down (or not yet heard from).
    pub liveness: Liveness,
    /// Its status schema, binary and lifecycle, as last reported.
    pub report: Option<(u32, Option<String>, Option<StoreLifecycle>)>,
    /// Regions it reported leading.
    pub leaders: usize,
    /// Replicas it reported.
    pub replicas: usize,
}

/// One line of the audit: what the monitor did, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Numbers entries.
    pub seq: u64,
    /// When (monitor clock).
    pub at: Duration,
    /// The repair.
    pub repair: PlannedRepair,
    /// "started", "done: ...", "failed: ...", "skipped: ...".
    pub event: String,
}

/// The monitor's view of the cluster after one evaluation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    /// When (monitor clock).
    pub at: Duration,
    /// Problems that lasted their hold time, most urgent first.
    pub detections: Vec<Detection>,
    /// Analyses that could not conclude.
    pub insufficient: Vec<Insufficient>,
    /// Repairs planned this turn (carried out unless `dry_run`).
    pub planned: Vec<PlannedRepair>,
    /// True if the monitor only plans.
    pub dry_run: bool,
    /// Every store.
    pub stores: Vec<StoreHealth>,
    /// Count of insufficient-information outcomes since the monitor started, per
    /// analysis and field.
    pub insufficient_total: Vec<(AnalysisCode, FieldId, u64)>,
    /// Repairs since the monitor started, per kind and result ("done", "failed").
    pub repairs_total: Vec<(RepairKind, String, u64)>,
    /// Entries a newer node sent that this binary could not name (an analysis, field or
    /// repair kind it does not know): left out of this report, never taken for another.
    /// 0 in the process that evaluated.
    pub skipped: u64,
    /// Turns whose repairs waited because the cluster version does not allow them yet
    /// (repairs are recorded in the directory, a command kind of cluster version 2).
    pub repairs_deferred: u64,
}

impl HealthReport {
    /// True if nothing was detected.
    pub fn is_healthy(&self) -> bool {
        self.detections.is_empty()
    }
}

/// The most audit entries kept.
const AUDIT_MAX: usize = 256;

/// The health monitor (see the module docs).
#[derive(Debug)]
pub struct Monitor {
    config: HealthConfig,
    started: Option<Duration>,
    stores: BTreeMap<StoreId, ObservedStore>,
    first_seen: HashMap<(AnalysisCode, Subject), Duration>,
    /// Regions with a repair running, and when it started.
    active: BTreeMap<RegionId, (PlannedRepair, Duration)>,
    /// When each region's last repair ended.
    recent: BTreeMap<RegionId, Duration>,
    audit: VecDeque<AuditEntry>,
    next_seq: u64,
    insufficient_total: BTreeMap<(AnalysisCode, FieldId), u64>,
    repairs_total: BTreeMap<(RepairKind, String), u64>,
    repairs_deferred: u64,
    last: HealthReport,
}

impl Monitor {
    /// A monitor that has heard nothing yet.
    pub fn new(config: HealthConfig) -> Monitor {
        Monitor {
            config,
            started: None,
            stores: BTreeMap::new(),
            first_seen: HashMap::new(),
            active: BTreeMap::new(),
            recent: BTreeMap::new(),
            audit: VecDeque::new(),
            next_seq: 1,
            insufficient_total: BTreeMap::new(),
            repairs_total: BTreeMap::new(),
            repairs_deferred: 0,
            last: HealthReport::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Changes the settings.
    pub fn config_mut(&mut self) -> &mut HealthConfig {
        &mut self.config
    }

    /// Takes a store's report; returns false if it is older than the one held (reports
    /// may be reordered or duplicated on their way).
    pub fn observe(&mut self, report: ObservedStore) -> bool {
        if let Some(held) = self.stores.get(&report.store)
            && !report.is_newer_than(held)
        {
            return false;
        }
        self.stores.insert(report.store, report);
        true
    }

    /// The last report taken from `store`.
    pub fn observed(&self, store: StoreId) -> Option<&ObservedStore> {
        self.stores.get(&store)
    }

    /// Evaluates every analysis at monitor time `now` over the reports held and the
    /// directory's `records`, and plans repairs.
    pub fn evaluate(&mut self, now: Duration, records: &[RegionRecord]) -> HealthReport {
        let started = *self.started.get_or_insert(now);
        let regions = self.regions(records);
        let liveness = self.liveness(now, started, &regions);
        let facts = analysis::Facts {
            now,
            config: &self.config,
            regions: &regions,
            stores: &self.stores,
            liveness: &liveness,
        };
        let outcomes = evaluate::evaluate(&facts);
        let mut detections = Vec::new();
        let mut insufficient = Vec::new();
        let mut seen = HashMap::new();
        for (code, subject, outcome, _) in outcomes {
            match outcome {
                Outcome::NoProblem => {}
                Outcome::Problem(detail) => {
                    let since = self.first_seen.get(&(code, subject)).copied().unwrap_or(now);
                    seen.insert((code, subject), since);
                    let def = analysis::def(code);
                    if now.saturating_sub(since) >= (def.hold)(&self.config) {
                        detections.push(Detection {
                            code,
                            priority: def.priority,
                            subject,
                            detail,
                            since,
                        });
                    }
                }
                Outcome::InsufficientInfo(missing) => {
                    *self.insufficient_total.entry((code, missing.field)).or_default() += 1;
                    insufficient.push(Insufficient { code, subject, missing });
                }
            }
        }
        self.first_seen = seen;
        detections.sort_by_key(|d| (d.priority, d.code, d.subject));
        let planned = self.plan(now, &detections, &regions);
        let stores = liveness
            .iter()
            .map(|(&store, &liveness)| {
                let report = self.stores.get(&store);
                StoreHealth {
                    store,
                    liveness,
                    report: report.map(|r| (r.schema, r.binary_version.clone(), r.state)),
                    leaders: report.map_or(0, |r| {
                        r.replicas.iter().filter(|p| p.role == Some(Role::Leader)).count()
                    }),
                    replicas: report.map_or(0, |r| r.replicas.len()),
                }
            })
            .collect();
        self.last = HealthReport {
            at: now,
            detections,
            insufficient,
            planned,
            dry_run: self.config.dry_run,
            stores,
            insufficient_total: self
                .insufficient_total
                .iter()
                .map(|(&(c, f), &n)| (c, f, n))
                .collect(),
            repairs_total: self
                .repairs_total
                .iter()
                .map(|((k, r), &n)| (*k, r.clone(), n))
                .collect(),
            skipped: 0,
            repairs_deferred: self.repairs_deferred,
        };
        self.last.clone()
    }

    /// The last evaluation.
    pub fn last(&self) -> &HealthReport {
        &self.last
    }

    /// The audit ring, oldest first.
    pub fn audit(&self) -> Vec<AuditEntry> {
        self.audit.iter().cloned().collect()
    }

    /// Counts a turn whose repairs wait for the cluster version; true the first time.
    pub fn repairs_deferred(&mut self) -> bool {
        self.repairs_deferred += 1;
        self.last.repairs_deferred = self.repairs_deferred;
        self.repairs_deferred == 1
    }

    /// Blocks repairs of `region` for `repair_block` from `now` (another monitor
    /// repairs it, or did lately).
    pub fn block_region(&mut self, region: RegionId, now: Duration) {
        self.recent.insert(region, now);
    }

    /// Records that `repair` starts (before its first step: invariant H5) and marks its
    /// region busy.
    pub fn repair_started(&mut self, now: Duration, repair: &PlannedRepair) {
        self.active.insert(repair.region, (repair.clone(), now));
        self.record(now, repair, "started".into());
    }

    /// Records how `repair` ended; the region may be repaired again after
    /// `repair_block`.
    pub fn repair_finished(
        &mut self,
        now: Duration,
        repair: &PlannedRepair,
        result: Result<String, String>,
    ) {
        self.active.remove(&repair.region);
        self.recent.insert(repair.region, now);
        let (key, event) = match result {
            Ok(what) => ("done", format!("done: {what}")),
            Err(why) => ("failed", format!("failed: {why}")),
        };
        *self.repairs_total.entry((repair.kind, key.into())).or_default() += 1;
        self.record(now, repair, event);
    }

    fn record(&mut self, at: Duration, repair: &PlannedRepair, event: String) {
        if self.audit.len() == AUDIT_MAX {
            self.audit.pop_front();
        }
        self.audit.push_back(AuditEntry { seq: self.next_seq, at, repair: repair.clone(), event });
        self.next_seq += 1;
    }

    /// Each region at the newest epoch the directory or a replica knows.
    fn regions(&self, records: &[RegionRecord]) -> Vec<RegionFacts> {
        let mut by_id: BTreeMap<RegionId, RegionFacts> = BTreeMap::new();
        for r in records {
            by_id.insert(
                r.region.id,
                RegionFacts { region: r.region.clone(), directory_epoch: Some(r.region.epoch) },
            );
        }
        for store in self.stores.values() {
            for rep in &store.replicas {
                if !rep.initialized {
                    continue;
                }
                let e = by_id.entry(rep.region.id).or_insert_with(|| RegionFacts {
                    region: rep.region.clone(),
                    directory_epoch: None,
                });
                if newer(&rep.region, &e.region) {
                    e.region = rep.region.clone();
                }
            }
        }
        by_id.into_values().collect()
    }

    fn liveness(
        &self,
        now: Duration,
        started: Duration,
        regions: &[RegionFacts],
    ) -> BTreeMap<StoreId, Liveness> {
        let mut all: BTreeSet<StoreId> = self.stores.keys().copied().collect();
        for r in regions {
            all.extend(r.region.peers.iter().map(|p| p.store));
        }
        all.into_iter()
            .map(|store| {
                let last = self.stores.get(&store).map_or(started, |r| r.received_at);
                let liveness = if now.saturating_sub(last) < self.config.store_down_after {
                    if self.stores.contains_key(&store) { Liveness::Up } else { Liveness::Unknown }
                } else {
                    Liveness::Down { since: last }
                };
                (store, liveness)
            })
            .collect()
    }

    /// The repairs for `detections`, under the rules in the module docs.
    fn plan(
        &mut self,
        now: Duration,
        detections: &[Detection],
        regions: &[RegionFacts],
    ) -> Vec<PlannedRepair> {
        let critical: BTreeSet<RegionId> = detections
            .iter()
            .filter(|d| d.priority == Priority::Critical)
            .filter_map(|d| match d.subject {
                Subject::Region(r) => Some(r),
                _ => None,
            })
            .collect();
        let mut planned: Vec<PlannedRepair> = Vec::new();
        let mut busy: BTreeSet<RegionId> = self.active.keys().copied().collect();
        for d in detections {
            let Some(kind) = analysis::def(d.code).repair else { continue };
            if self.config.detect_only.contains(&kind) {
                continue;
            }
            let candidates: Vec<PlannedRepair> = match d.subject {
                Subject::Region(region) => {
                    vec![PlannedRepair { kind, region, reason: d.code, remove: None }]
                }
                Subject::Store(store) => {
                    if self.config.maintenance.get(&store).is_some_and(|&until| now < until) {
                        continue;
                    }
                    regions
                        .iter()
                        .filter(|r| r.region.peers.iter().any(|p| p.store == store))
                        .map(|r| PlannedRepair {
                            kind,
                            region: r.region.id,
                            reason: d.code,
                            remove: Some(store),
                        })
                        .collect()
                }
                Subject::Cluster => Vec::new(),
            };
            for repair in candidates {
                if planned.len() >= self.config.max_repairs_per_turn {
                    return planned;
                }
                let blocked = busy.contains(&repair.region)
                    || critical.contains(&repair.region)
                    || self
                        .recent
                        .get(&repair.region)
                        .is_some_and(|&t| now.saturating_sub(t) < self.config.repair_block);
                if blocked {
                    continue;
                }
                busy.insert(repair.region);
                planned.push(repair);
            }
        }
        planned
    }
}

/// True if `a` is a newer view of its region than `b`.
fn newer(a: &Region, b: &Region) -> bool {
    (a.epoch.version, a.epoch.conf_ver) > (b.epoch.version, b.epoch.conf_ver)
}
