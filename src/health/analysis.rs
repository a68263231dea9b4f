//! The analysis table: each analysis is data — what it detects, how urgent it is, the
//! status fields it reads and the status schema it needs — plus a match function that
//! only ever sees *known* values.
//!
//! How unknowns are kept out of decisions (invariant 5 in ARCHITECTURE.md):
//! - before a match function runs, the evaluator checks that every field the analysis
//!   [`requires`](AnalysisDef::requires) was positively reported by every replica
//!   involved, and that every store involved implements at least
//!   [`min_schema`](AnalysisDef::min_schema); if not, the outcome is
//!   [`Outcome::InsufficientInfo`] (counted, shown, never repaired);
//! - a match function reads fields only through the views below, whose accessors
//!   return `Result<T, Unknown>`: an absent value cannot be compared with anything, it
//!   can only end the analysis as insufficient information (`?`).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use regionkv_engine::{PeerId, Region, StoreId};

use super::HealthConfig;
use super::observed::{ObservedReplica, ObservedStore, ReplicationState, Role, TimelineHealth};

/// What an analysis detects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnalysisCode {
    /// Fewer than a majority of a region's voters are on live stores.
    QuorumLost,
    /// Two replicas of a region lead in the same term.
    SplitBrain,
    /// Two replicas hashed different images at the same index.
    ReplicaDivergence,
    /// A region whose quorum is alive has no leader.
    NoLeader,
    /// A store stopped reporting.
    StoreDown,
    /// A store has been down past the dead timeout, corroborated by its peers' leaders.
    StoreDead,
    /// A store reported that it stopped on a failure of its log or engine.
    StoreFailed,
    /// A region has fewer voters than the replication factor.
    UnderReplicated,
    /// A region has more voters than the replication factor.
    ExtraReplica,
    /// A leader sends a follower a snapshot, or the follower is behind the leader's log.
    PendingReplica,
    /// A replica applies far behind its leader's commit.
    LaggingReplica,
    /// A replica stopped applying its log.
    TimelineBroken,
    /// Some stores lead many more regions than others.
    LeaderImbalance,
    /// The directory holds an older epoch of a region than its replicas.
    DirectoryStale,
    /// Stores run different binaries.
    VersionSkew,
    /// A leader holds a transaction lock older than `txn_lock_old_after`: a
    /// transaction in doubt that nobody resolves (is the recovery daemon running?).
    TxnInDoubtOld,
}

impl AnalysisCode {
    /// Its name in reports and settings (kebab case).
    pub fn name(self) -> &'static str {
        match self {
            AnalysisCode::QuorumLost => "quorum-lost",
            AnalysisCode::SplitBrain => "split-brain",
            AnalysisCode::ReplicaDivergence => "replica-divergence",
            AnalysisCode::NoLeader => "no-leader",
            AnalysisCode::StoreDown => "store-down",
            AnalysisCode::StoreDead => "store-dead",
            AnalysisCode::StoreFailed => "store-failed",
            AnalysisCode::UnderReplicated => "under-replicated",
            AnalysisCode::ExtraReplica => "extra-replica",
            AnalysisCode::PendingReplica => "pending-replica",
            AnalysisCode::LaggingReplica => "lagging-replica",
            AnalysisCode::TimelineBroken => "timeline-broken",
            AnalysisCode::LeaderImbalance => "leader-imbalance",
            AnalysisCode::DirectoryStale => "directory-stale",
            AnalysisCode::VersionSkew => "version-skew",
            AnalysisCode::TxnInDoubtOld => "txn-in-doubt-old",
        }
    }

    /// The code named `name`.
    pub fn from_name(name: &str) -> Option<AnalysisCode> {
        TABLE.iter().map(|d| d.code).find(|c| c.name() == name)
    }
}

impl fmt::Display for AnalysisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How urgent a problem is; repairs run in this order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Data at risk or unavailable.
    Critical,
    /// Availability at risk.
    High,
    /// Redundancy or performance at risk.
    Medium,
    /// Balance and bookkeeping.
    Low,
}

/// What an analysis looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One region and its replicas.
    Region,
    /// One store.
    Store,
    /// The whole cluster.
    Cluster,
}

/// A status field an analysis may read. Fields of the first status schema are always
/// present in a decoded report except where noted; later ones may be absent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FieldId {
    /// The replica's role (schema 1, but a code the monitor cannot name is unknown).
    Role,
    /// The log's first index (schema 2).
    FirstIndex,
    /// The replica's apply stream (schema 2).
    Timeline,
    /// The leader's view of its followers (schema 2; required of leaders only).
    Progress,
    /// The leader's view of whether a follower was heard from lately (schema 2).
    RecentActive,
    /// Whether the replica is a learner (schema 2).
    IsLearner,
    /// The replica's image hash (schema 2, once the cluster version allows it).
    ImageHash,
    /// The store's binary version (schema 2).
    BinaryVersion,
    /// The store's lifecycle (schema 2).
    StoreState,
    /// A leader's oldest transaction lock's age (schema 2, from the transactions
    /// release on; required of leaders only).
    OldestLockAge,
    /// The store's status schema itself.
    StatusSchema,
}

impl FieldId {
    pub(super) fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FieldId::Role => "role",
            FieldId::FirstIndex => "first_index",
            FieldId::Timeline => "timeline",
            FieldId::Progress => "progress",
            FieldId::RecentActive => "progress.recent_active",
            FieldId::IsLearner => "is_learner",
            FieldId::ImageHash => "image_hash",
            FieldId::BinaryVersion => "binary_version",
            FieldId::StoreState => "store_state",
            FieldId::OldestLockAge => "oldest_lock_age_ms",
            FieldId::StatusSchema => "status_schema",
        }
    }
}

/// A value the monitor does not know: the analysis that asked for it ends as
/// insufficient information.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unknown {
    /// The field.
    pub field: FieldId,
    /// The store that did not report it.
    pub store: Option<StoreId>,
}

/// What a match function returns: `Some(detail)` if the problem is there.
pub type Matched = Result<Option<String>, Unknown>;

/// A match function, by scope.
#[derive(Clone, Copy)]
pub enum Matcher {
    /// Sees one region.
    Region(fn(&RegionView<'_>) -> Matched),
    /// Sees one store.
    Store(fn(&StoreView<'_>) -> Matched),
    /// Sees the cluster.
    Cluster(fn(&ClusterView<'_>) -> Matched),
}

/// A repair the monitor may run for a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RepairKind {
    /// Send the region a request, which wakes a hibernated group (idempotent).
    WakeRegion,
    /// Add a learner on a healthy store, let it catch up, promote it, remove the peer on
    /// the dead store: one membership change at a time, add before remove.
    ReplaceReplica,
    /// Add a voter on a healthy store (learner first).
    AddReplica,
    /// Remove a voter: one on a down store first, never the leader's.
    RemoveReplica,
}

impl RepairKind {
    /// Its name in reports and settings.
    pub fn name(self) -> &'static str {
        match self {
            RepairKind::WakeRegion => "wake-region",
            RepairKind::ReplaceReplica => "replace-replica",
            RepairKind::AddReplica => "add-replica",
            RepairKind::RemoveReplica => "remove-replica",
        }
    }
}

/// One row of the table.
pub struct AnalysisDef {
    /// What it detects.
    pub code: AnalysisCode,
    /// For people.
    pub description: &'static str,
    /// How urgent.
    pub priority: Priority,
    /// What it looks at.
    pub scope: Scope,
    /// Fields every replica (or store) involved must have reported.
    pub requires: &'static [FieldId],
    /// The status schema every store involved must implement.
    pub min_schema: u32,
    /// How long the problem must last before it is reported (and repaired).
    pub hold: fn(&HealthConfig) -> Duration,
    /// The repair, if any.
    pub repair: Option<RepairKind>,
    /// The match function.
    pub matcher: Matcher,
}

fn no_hold(_: &HealthConfig) -> Duration {
    Duration::ZERO
}

/// The table, in priority order.
pub static TABLE: &[AnalysisDef] = &[
    AnalysisDef {
        code: AnalysisCode::QuorumLost,
        description: "fewer than a majority of the region's voters are on live stores: alert; \
                      the operator decides (no automatic repair can be safe here)",
        priority: Priority::Critical,
        scope: Scope::Region,
        requires: &[],
        min_schema: 1,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Region(quorum_lost),
    },
    AnalysisDef {
        code: AnalysisCode::SplitBrain,
        description: "two replicas lead the region in the same term (a Raft safety bug): alert",
        priority: Priority::Critical,
        scope: Scope::Region,
        requires: &[FieldId::Role],
        min_schema: 1,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Region(split_brain),
    },
    AnalysisDef {
        code: AnalysisCode::ReplicaDivergence,
        description: "two replicas hashed different images at the same index: alert",
        priority: Priority::Critical,
        scope: Scope::Region,
        requires: &[FieldId::ImageHash],
        min_schema: 2,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Region(replica_divergence),
    },
    AnalysisDef {
        code: AnalysisCode::NoLeader,
        description: "the region's quorum is alive and no replica leads or knows a leader",
        priority: Priority::High,
        scope: Scope::Region,
        requires: &[FieldId::Role],
        min_schema: 1,
        hold: |c| c.no_leader_after,
        repair: Some(RepairKind::WakeRegion),
        matcher: Matcher::Region(no_leader),
    },
    AnalysisDef {
        code: AnalysisCode::StoreDown,
        description: "the store has not reported for the down timeout",
        priority: Priority::High,
        scope: Scope::Store,
        requires: &[],
        min_schema: 1,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Store(store_down),
    },
    AnalysisDef {
        code: AnalysisCode::StoreDead,
        description: "the store has been down for the dead timeout, and leaders on other \
                      stores no longer hear from it: its replicas are replaced",
        priority: Priority::High,
        scope: Scope::Store,
        requires: &[FieldId::RecentActive],
        min_schema: 2,
        hold: no_hold,
        repair: Some(RepairKind::ReplaceReplica),
        matcher: Matcher::Store(store_dead),
    },
    AnalysisDef {
        code: AnalysisCode::StoreFailed,
        description: "the store stopped on a failure of its log or engine",
        priority: Priority::High,
        scope: Scope::Store,
        requires: &[FieldId::StoreState],
        min_schema: 2,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Store(store_failed),
    },
    AnalysisDef {
        code: AnalysisCode::UnderReplicated,
        description: "the region has fewer voters than the replication factor",
        priority: Priority::High,
        scope: Scope::Region,
        requires: &[],
        min_schema: 1,
        hold: |c| c.under_replicated_after,
        repair: Some(RepairKind::AddReplica),
        matcher: Matcher::Region(under_replicated),
    },
    AnalysisDef {
        code: AnalysisCode::TimelineBroken,
        description: "a replica stopped applying its log (halted): upgrade or replace it",
        priority: Priority::High,
        scope: Scope::Region,
        requires: &[FieldId::Timeline],
        min_schema: 2,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Region(timeline_broken),
    },
    AnalysisDef {
        code: AnalysisCode::ExtraReplica,
        description: "the region has more voters than the replication factor",
        priority: Priority::Medium,
        scope: Scope::Region,
        requires: &[],
        min_schema: 1,
        hold: |c| c.under_replicated_after,
        repair: Some(RepairKind::RemoveReplica),
        matcher: Matcher::Region(extra_replica),
    },
    AnalysisDef {
        code: AnalysisCode::PendingReplica,
        description: "the leader sends a follower a snapshot, or the follower is behind the \
                      leader's log: report only (Raft sends the snapshot)",
        priority: Priority::Medium,
        scope: Scope::Region,
        requires: &[FieldId::Role, FieldId::Progress, FieldId::FirstIndex],
        min_schema: 2,
        hold: |c| c.pending_after,
        repair: None,
        matcher: Matcher::Region(pending_replica),
    },
    AnalysisDef {
        code: AnalysisCode::LaggingReplica,
        description: "a replica applies far behind its leader's commit: report only",
        priority: Priority::Medium,
        scope: Scope::Region,
        requires: &[FieldId::Role],
        min_schema: 1,
        hold: |c| c.pending_after,
        repair: None,
        matcher: Matcher::Region(lagging_replica),
    },
    AnalysisDef {
        code: AnalysisCode::LeaderImbalance,
        description: "a store leads more than 1.1 x the mean + 1 regions: report only (leader \
                      transfers are not automated yet)",
        priority: Priority::Low,
        scope: Scope::Cluster,
        requires: &[FieldId::Role],
        min_schema: 1,
        hold: |c| c.pending_after,
        repair: None,
        matcher: Matcher::Cluster(leader_imbalance),
    },
    AnalysisDef {
        code: AnalysisCode::DirectoryStale,
        description: "the directory holds an older epoch of the region than its leader \
                      reports: report only (leaders report again)",
        priority: Priority::Low,
        scope: Scope::Region,
        requires: &[FieldId::Role],
        min_schema: 1,
        hold: |c| c.pending_after,
        repair: None,
        matcher: Matcher::Region(directory_stale),
    },
    AnalysisDef {
        code: AnalysisCode::VersionSkew,
        description: "stores run different binaries (an upgrade in progress?): finalize is \
                      refused until they agree",
        priority: Priority::Low,
        scope: Scope::Cluster,
        requires: &[FieldId::BinaryVersion],
        min_schema: 2,
        hold: |c| c.version_skew_after,
        repair: None,
        matcher: Matcher::Cluster(version_skew),
    },
    AnalysisDef {
        code: AnalysisCode::TxnInDoubtOld,
        description: "the region's leader holds a transaction lock older than the threshold \
                      (a transaction in doubt nobody resolves): report only (the recovery \
                      daemon, or the operator, decides it through its record)",
        priority: Priority::Low,
        scope: Scope::Region,
        requires: &[FieldId::Role, FieldId::OldestLockAge],
        min_schema: 2,
        hold: no_hold,
        repair: None,
        matcher: Matcher::Region(txn_in_doubt_old),
    },
];

/// The definition of `code`.
pub fn def(code: AnalysisCode) -> &'static AnalysisDef {
    TABLE.iter().find(|d| d.code == code).expect("every code has a row")
}

/// Whether a store is heard from, as the monitor judges it by its own clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Reported within the down timeout.
    Up,
    /// Not heard from yet, and the monitor has not run for the down timeout.
    Unknown,
    /// Silent for the down timeout (since the given monitor time).
    Down {
        /// When it went silent (its last report, or the monitor's start).
        since: Duration,
    },
}

/// What is known of one region before its replicas are looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionFacts {
    /// The region at the newest epoch the directory or any replica knows.
    pub region: Region,
    /// The epoch the directory holds, if it holds the region.
    pub directory_epoch: Option<regionkv_engine::Epoch>,
}

/// Everything one evaluation reads.
pub struct Facts<'a> {
    /// The monitor's clock now.
    pub now: Duration,
    /// The settings.
    pub config: &'a HealthConfig,
    /// Each region.
    pub regions: &'a [RegionFacts],
    /// Every store's last report.
    pub stores: &'a BTreeMap<StoreId, ObservedStore>,
    /// Every store the cluster has (a peer in some region, or a report).
    pub liveness: &'a BTreeMap<StoreId, Liveness>,
}

impl Facts<'_> {
    pub(super) fn is_up(&self, store: StoreId) -> bool {
        matches!(self.liveness.get(&store), Some(Liveness::Up))
    }

    pub(super) fn schema(&self, store: StoreId) -> u32 {
        self.stores.get(&store).map_or(1, |s| s.schema)
    }
}

/// A replica of a region on a live store, as a match function sees it.
pub struct ReplicaView<'a> {
    /// The store.
    pub store: StoreId,
    /// Its peer in the region (from the directory's or the newest region).
    pub peer: PeerId,
    pub(super) r: &'a ObservedReplica,
    pub(super) reads: &'a Cell<u32>,
}

impl ReplicaView<'_> {
    fn read<T>(&self, field: FieldId, value: Option<T>) -> Result<T, Unknown> {
        self.reads.set(self.reads.get() | field.bit());
        value.ok_or(Unknown { field, store: Some(self.store) })
    }

    /// Its role.
    pub fn role(&self) -> Result<Role, Unknown> {
        self.read(FieldId::Role, self.r.role)
    }
    /// Its term (schema 1: always known).
    pub fn term(&self) -> u64 {
        self.r.term
    }
    /// The leader it knows of (schema 1: `None` means it knows none).
    pub fn leader(&self) -> Option<PeerId> {
        self.r.leader
    }
    /// Its commit index (schema 1).
    pub fn commit(&self) -> u64 {
        self.r.commit
    }
    /// Its applied index (schema 1).
    pub fn applied(&self) -> u64 {
        self.r.applied
    }
    /// The region as it knows it (schema 1).
    pub fn region(&self) -> &Region {
        &self.r.region
    }
    /// Its log's first index.
    pub fn first_index(&self) -> Result<u64, Unknown> {
        self.read(FieldId::FirstIndex, self.r.first_index)
    }
    /// Its apply stream.
    pub fn timeline(&self) -> Result<TimelineHealth, Unknown> {
        self.read(FieldId::Timeline, self.r.timeline)
    }
    /// Whether it is a learner.
    pub fn is_learner(&self) -> Result<bool, Unknown> {
        self.read(FieldId::IsLearner, self.r.is_learner)
    }
    /// Its image hash.
    pub fn image_hash(&self) -> Result<(u64, u64), Unknown> {
        self.read(FieldId::ImageHash, self.r.image_hash)
    }
    /// A leader's oldest transaction lock's age (0: it holds none).
    pub fn oldest_lock_age(&self) -> Result<Duration, Unknown> {
        self.read(FieldId::OldestLockAge, self.r.oldest_lock_age_ms).map(Duration::from_millis)
    }
    /// A leader's view of follower `peer`: matched index and replication state.
    pub fn progress_of(&self, peer: PeerId) -> Result<(u64, ReplicationState), Unknown> {
        let progress = self.read(FieldId::Progress, self.r.progress.as_ref())?;
        let p = progress.iter().find(|p| p.peer == peer);
        let p = self.read(FieldId::Progress, p)?;
        Ok((p.matched, self.read(FieldId::Progress, p.state)?))
    }
    /// Ticks since the leader's store heard from follower `peer`'s store.
    pub fn ticks_since_heard(&self, peer: PeerId) -> Result<u64, Unknown> {
        let progress = self.read(FieldId::Progress, self.r.progress.as_ref())?;
        let p = progress.iter().find(|p| p.peer == peer);
        self.read(FieldId::RecentActive, p.and_then(|p| p.ticks_since_heard))
    }

    /// A leader's view of whether follower `peer` was heard from lately.
    pub fn recent_active(&self, peer: PeerId) -> Result<bool, Unknown> {
        let progress = self.read(FieldId::Progress, self.r.progress.as_ref())?;
        let p = progress.iter().find(|p| p.peer == peer);
        self.read(FieldId::RecentActive, p.and_then(|p| p.recent_active))
    }
}

/// One region as a match function sees it.
pub struct RegionView<'a> {
    /// The region (the newest epoch known).
    pub region: &'a Region,
    /// The epoch the directory holds, if it holds the region.
    pub directory_epoch: Option<regionkv_engine::Epoch>,
    /// Its replicas on live stores that reported it.
    pub replicas: Vec<ReplicaView<'a>>,
    /// Stores of its peers that are down.
    pub down: Vec<StoreId>,
    /// The settings.
    pub config: &'a HealthConfig,
}

impl RegionView<'_> {
    /// Peers that are not known learners: voters, or of unknown kind.
    fn voters(&self) -> usize {
        self.region
            .peers
            .iter()
            .filter(|p| {
                !self.replicas.iter().any(|r| r.peer == p.id && r.r.is_learner == Some(true))
            })
            .count()
    }

    /// The replica that leads with the highest term, if any reports leading.
    pub fn leader(&self) -> Result<Option<&ReplicaView<'_>>, Unknown> {
        let mut best: Option<&ReplicaView<'_>> = None;
        for r in &self.replicas {
            if r.role()? == Role::Leader && best.is_none_or(|b| r.term() > b.term()) {
                best = Some(r);
            }
        }
        Ok(best)
    }
}

#[allow(clippy::unnecessary_wraps)] // every match function has the table's signature
fn quorum_lost(v: &RegionView<'_>) -> Matched {
    let voters = v.region.peers.len();
    let alive = voters - v.down.len();
    Ok((voters > 0 && alive <= voters / 2)
        .then(|| format!("{alive} of {voters} peers are on live stores (down: {:?})", v.down)))
}

fn split_brain(v: &RegionView<'_>) -> Matched {
    let mut leaders: BTreeMap<u64, Vec<StoreId>> = BTreeMap::new();
    for r in &v.replicas {
        if r.role()? == Role::Leader {
            leaders.entry(r.term()).or_default().push(r.store);
        }
    }
    Ok(leaders
        .into_iter()
        .find(|(_, stores)| stores.len() > 1)
        .map(|(term, stores)| format!("stores {stores:?} all lead in term {term}")))
}

fn replica_divergence(v: &RegionView<'_>) -> Matched {
    let mut at: BTreeMap<u64, (u64, StoreId)> = BTreeMap::new();
    for r in &v.replicas {
        let (index, hash) = r.image_hash()?;
        match at.get(&index) {
            Some(&(h, store)) if h != hash => {
                return Ok(Some(format!(
                    "at index {index} store {store} hashed {h:#x} and store {} {hash:#x}",
                    r.store
                )));
            }
            Some(_) => {}
            None => {
                at.insert(index, (hash, r.store));
            }
        }
    }
    Ok(None)
}

fn no_leader(v: &RegionView<'_>) -> Matched {
    if !v.down.is_empty() && v.region.peers.len() - v.down.len() <= v.region.peers.len() / 2 {
        return Ok(None); // QuorumLost's
    }
    // Every replica on a live store must have reported (one that did not might lead).
    if v.replicas.len() + v.down.len() < v.region.peers.len() {
        return Ok(None);
    }
    for r in &v.replicas {
        if r.role()? == Role::Leader || r.leader().is_some() {
            return Ok(None);
        }
    }
    Ok(Some(format!("none of {} live replicas leads or knows a leader", v.replicas.len())))
}

#[allow(clippy::unnecessary_wraps)] // every match function has the table's signature
fn under_replicated(v: &RegionView<'_>) -> Matched {
    let voters = v.voters();
    Ok((voters < v.config.replication_factor).then(|| {
        format!("{voters} voters, the replication factor is {}", v.config.replication_factor)
    }))
}

#[allow(clippy::unnecessary_wraps)] // every match function has the table's signature
fn extra_replica(v: &RegionView<'_>) -> Matched {
    let voters = v.voters();
    Ok((voters > v.config.replication_factor).then(|| {
        format!("{voters} voters, the replication factor is {}", v.config.replication_factor)
    }))
}

fn timeline_broken(v: &RegionView<'_>) -> Matched {
    for r in &v.replicas {
        if r.timeline()? == TimelineHealth::Broken {
            return Ok(Some(format!("the replica on store {} stopped applying", r.store)));
        }
    }
    Ok(None)
}

fn pending_replica(v: &RegionView<'_>) -> Matched {
    let Some(leader) = v.leader()? else { return Ok(None) };
    let first = leader.first_index()?;
    for p in &v.region.peers {
        if p.id == leader.peer || v.down.contains(&p.store) {
            continue;
        }
        let (matched, state) = leader.progress_of(p.id)?;
        if state == ReplicationState::Snapshot || matched + 1 < first {
            return Ok(Some(format!(
                "store {}: matched {matched}, the leader's log starts at {first} ({state:?})",
                p.store
            )));
        }
    }
    Ok(None)
}

fn lagging_replica(v: &RegionView<'_>) -> Matched {
    let Some(leader) = v.leader()? else { return Ok(None) };
    for r in &v.replicas {
        let behind = leader.commit().saturating_sub(r.applied());
        if behind > v.config.lag_entries {
            return Ok(Some(format!("store {} applied {behind} entries behind", r.store)));
        }
    }
    Ok(None)
}

fn directory_stale(v: &RegionView<'_>) -> Matched {
    let Some(leader) = v.leader()? else { return Ok(None) };
    let led = leader.region().epoch;
    Ok(match v.directory_epoch {
        Some(held) if (held.version, held.conf_ver) < (led.version, led.conf_ver) => {
            Some(format!("the directory holds epoch {held}, the leader is at {led}"))
        }
        // A region the directory does not list yet is the background's to report.
        _ => None,
    })
}

fn txn_in_doubt_old(v: &RegionView<'_>) -> Matched {
    let Some(leader) = v.leader()? else { return Ok(None) };
    let age = leader.oldest_lock_age()?;
    Ok((age > v.config.txn_lock_old_after).then(|| {
        format!(
            "the leader on store {} holds a lock {age:?} old (threshold {:?})",
            leader.store, v.config.txn_lock_old_after
        )
    }))
}

/// One store as a match function sees it.
pub struct StoreView<'a> {
    /// The store.
    pub store: StoreId,
    /// Its liveness.
    pub liveness: Liveness,
    /// Its last report, if any ever came.
    pub report: Option<&'a ObservedStore>,
    /// Leaders on other live stores of regions with a peer on this store, each with
    /// this store's peer.
    pub leaders: Vec<(ReplicaView<'a>, PeerId)>,
    /// Regions that list a peer on this store (at the newest epoch known).
    pub hosted: usize,
    /// The monitor's clock now.
    pub now: Duration,
    /// The settings.
    pub config: &'a HealthConfig,
    pub(super) reads: &'a Cell<u32>,
}

impl StoreView<'_> {
    /// Its lifecycle.
    pub fn state(&self) -> Result<super::observed::StoreLifecycle, Unknown> {
        self.reads.set(self.reads.get() | FieldId::StoreState.bit());
        self.report
            .and_then(|r| r.state)
            .ok_or(Unknown { field: FieldId::StoreState, store: Some(self.store) })
    }
}

#[allow(clippy::unnecessary_wraps)] // every match function has the table's signature
fn store_down(v: &StoreView<'_>) -> Matched {
    Ok(match v.liveness {
        Liveness::Up | Liveness::Unknown => None,
        Liveness::Down { since } => {
            Some(format!("no report for {:?}", v.now.saturating_sub(since)))
        }
    })
}

fn store_dead(v: &StoreView<'_>) -> Matched {
    let Liveness::Down { since } = v.liveness else { return Ok(None) };
    let down_for = v.now.saturating_sub(since);
    if down_for < v.config.store_dead_after || v.hosted == 0 {
        // Not dead yet, or nothing left on it to replace (its replicas were).
        return Ok(None);
    }
    // Corroboration: the store is silent to the monitor, and the leaders of its
    // regions on other stores do not hear from it either: by how long their store has
    // not heard from its store (kept fresh by the stores' liveness notices, also while
    // a group hibernates), else by an awake leader's check-quorum flag (a hibernated
    // leader's flag is old). One voice that still hears it keeps it alive: a monitor
    // cut off from a store its peers hear never declares it dead.
    let mut silent = 0;
    for (leader, peer) in &v.leaders {
        let hears = match leader.ticks_since_heard(*peer) {
            Ok(ticks) => ticks <= v.config.silent_ticks,
            Err(_) if leader.r.hibernated => continue,
            Err(_) => leader.recent_active(*peer)?,
        };
        if hears {
            return Ok(None);
        }
        silent += 1;
    }
    if silent == 0 {
        return Err(Unknown { field: FieldId::RecentActive, store: None });
    }
    Ok(Some(format!(
        "no report for {down_for:?}; {silent} leaders on other stores do not hear from it either"
    )))
}

fn store_failed(v: &StoreView<'_>) -> Matched {
    if v.liveness != Liveness::Up {
        return Ok(None);
    }
    Ok((v.state()? == super::observed::StoreLifecycle::Failed).then(|| "it reports Failed".into()))
}

/// The cluster as a match function sees it.
pub struct ClusterView<'a> {
    /// Live stores' last reports, with the replicas each reports.
    pub stores: Vec<(&'a ObservedStore, Vec<ReplicaView<'a>>)>,
    /// The settings.
    pub config: &'a HealthConfig,
    pub(super) reads: &'a Cell<u32>,
}

impl ClusterView<'_> {
    fn binary_version(&self, s: &ObservedStore) -> Result<String, Unknown> {
        self.reads.set(self.reads.get() | FieldId::BinaryVersion.bit());
        s.binary_version
            .clone()
            .ok_or(Unknown { field: FieldId::BinaryVersion, store: Some(s.store) })
    }
}

fn leader_imbalance(v: &ClusterView<'_>) -> Matched {
    if v.stores.len() < 2 {
        return Ok(None);
    }
    let mut counts = Vec::new();
    for (store, replicas) in &v.stores {
        let mut n = 0usize;
        for r in replicas {
            if r.role()? == Role::Leader {
                n += 1;
            }
        }
        counts.push((store.store, n));
    }
    let total: usize = counts.iter().map(|c| c.1).sum();
    let stores = counts.len();
    // n > mean * 1.1 + 1, in integers: 10 n stores > 11 total + 10 stores.
    Ok(counts
        .iter()
        .filter(|c| 10 * c.1 * stores > 11 * total + 10 * stores)
        .map(|c| format!("store {} leads {} of {total} regions over {stores} stores", c.0, c.1))
        .next())
}

fn version_skew(v: &ClusterView<'_>) -> Matched {
    let mut versions = BTreeSet::new();
    for (s, _) in &v.stores {
        versions.insert(v.binary_version(s)?);
    }
    Ok((versions.len() > 1).then(|| format!("binaries {versions:?}")))
}
