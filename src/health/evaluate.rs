//! The evaluator: runs every row of the analysis table over the facts, after the gates
//! that keep unknown values out of decisions (see `analysis.rs`).

use std::cell::Cell;
use std::fmt;

use regionkv_engine::{RegionId, StoreId};

use super::analysis::{
    AnalysisCode, AnalysisDef, ClusterView, Facts, FieldId, Liveness, Matched, Matcher,
    RegionFacts, RegionView, ReplicaView, StoreView, TABLE, Unknown,
};
use super::observed::Role;

/// What one analysis concluded about one subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing wrong.
    NoProblem,
    /// The problem is there.
    Problem(String),
    /// A field it needs was not reported: nothing is concluded, nothing repaired.
    InsufficientInfo(Unknown),
}

/// What an analysis is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A region.
    Region(RegionId),
    /// A store.
    Store(StoreId),
    /// The whole cluster.
    Cluster,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Region(r) => write!(f, "region {r}"),
            Subject::Store(s) => write!(f, "store {s}"),
            Subject::Cluster => f.write_str("cluster"),
        }
    }
}

/// Runs every analysis of the table over `facts`: one outcome per analysis and
/// subject. The second value of each is the set of fields the match function read
/// (for the test that every analysis declares what it reads).
pub fn evaluate(facts: &Facts<'_>) -> Vec<(AnalysisCode, Subject, Outcome, u32)> {
    let mut out = Vec::new();
    for def in TABLE {
        match def.matcher {
            Matcher::Region(f) => {
                for rf in facts.regions {
                    let reads = Cell::new(0);
                    let view = region_view(facts, rf, &reads);
                    let stores: Vec<StoreId> = view.replicas.iter().map(|r| r.store).collect();
                    let outcome = gate(def, facts, &stores, &view.replicas)
                        .unwrap_or_else(|| conclude(f(&view)));
                    out.push((def.code, Subject::Region(rf.region.id), outcome, reads.get()));
                }
            }
            Matcher::Store(f) => {
                for (&store, &liveness) in facts.liveness {
                    let reads = Cell::new(0);
                    let view = store_view(facts, store, liveness, &reads);
                    let leaders: Vec<ReplicaView<'_>> = Vec::new();
                    let stores: Vec<StoreId> = view.leaders.iter().map(|l| l.0.store).collect();
                    // The schema gate applies to the stores whose views are read.
                    let outcome =
                        gate(def, facts, &stores, &leaders).unwrap_or_else(|| conclude(f(&view)));
                    out.push((def.code, Subject::Store(store), outcome, reads.get()));
                }
            }
            Matcher::Cluster(f) => {
                let reads = Cell::new(0);
                let view = cluster_view(facts, &reads);
                let stores: Vec<StoreId> = view.stores.iter().map(|s| s.0.store).collect();
                let all: Vec<&ReplicaView<'_>> = view.stores.iter().flat_map(|s| &s.1).collect();
                let outcome =
                    gate_refs(def, facts, &stores, &all).unwrap_or_else(|| conclude(f(&view)));
                out.push((def.code, Subject::Cluster, outcome, reads.get()));
            }
        }
    }
    out
}

fn conclude(m: Matched) -> Outcome {
    match m {
        Ok(None) => Outcome::NoProblem,
        Ok(Some(detail)) => Outcome::Problem(detail),
        Err(unknown) => Outcome::InsufficientInfo(unknown),
    }
}

fn gate(
    def: &AnalysisDef,
    facts: &Facts<'_>,
    stores: &[StoreId],
    replicas: &[ReplicaView<'_>],
) -> Option<Outcome> {
    gate_refs(def, facts, stores, &replicas.iter().collect::<Vec<_>>())
}

/// The outcome before the match function runs, if the analysis cannot run: a store
/// below its schema, or a required field a replica did not report.
fn gate_refs(
    def: &AnalysisDef,
    facts: &Facts<'_>,
    stores: &[StoreId],
    replicas: &[&ReplicaView<'_>],
) -> Option<Outcome> {
    for &store in stores {
        if facts.schema(store) < def.min_schema {
            return Some(Outcome::InsufficientInfo(Unknown {
                field: FieldId::StatusSchema,
                store: Some(store),
            }));
        }
    }
    for field in def.requires {
        for r in replicas {
            let known = match field {
                FieldId::Role => r.r.role.is_some(),
                FieldId::FirstIndex => r.r.first_index.is_some() || r.r.role != Some(Role::Leader),
                FieldId::Timeline => r.r.timeline.is_some(),
                FieldId::Progress => r.r.progress.is_some() || r.r.role != Some(Role::Leader),
                FieldId::IsLearner => r.r.is_learner.is_some(),
                FieldId::ImageHash => r.r.image_hash.is_some(),
                FieldId::OldestLockAge => {
                    r.r.oldest_lock_age_ms.is_some() || r.r.role != Some(Role::Leader)
                }
                // Checked by the match function (per follower, or per store).
                FieldId::RecentActive
                | FieldId::BinaryVersion
                | FieldId::StoreState
                | FieldId::StatusSchema => true,
            };
            if !known {
                return Some(Outcome::InsufficientInfo(Unknown {
                    field: *field,
                    store: Some(r.store),
                }));
            }
        }
    }
    None
}

fn region_view<'a>(
    facts: &'a Facts<'a>,
    rf: &'a RegionFacts,
    reads: &'a Cell<u32>,
) -> RegionView<'a> {
    let region = &rf.region;
    let mut replicas = Vec::new();
    let mut down = Vec::new();
    for p in &region.peers {
        if !facts.is_up(p.store) {
            down.push(p.store);
            continue;
        }
        let Some(report) = facts.stores.get(&p.store) else { continue };
        if let Some(r) = report.replicas.iter().find(|r| r.region.id == region.id) {
            replicas.push(ReplicaView { store: p.store, peer: p.id, r, reads });
        }
    }
    RegionView { region, directory_epoch: rf.directory_epoch, replicas, down, config: facts.config }
}

fn store_view<'a>(
    facts: &'a Facts<'a>,
    store: StoreId,
    liveness: Liveness,
    reads: &'a Cell<u32>,
) -> StoreView<'a> {
    let mut leaders = Vec::new();
    let mut hosted = 0;
    for RegionFacts { region, .. } in facts.regions {
        let Some(mine) = region.peers.iter().find(|p| p.store == store) else { continue };
        hosted += 1;
        for p in &region.peers {
            if p.store == store || !facts.is_up(p.store) {
                continue;
            }
            let Some(report) = facts.stores.get(&p.store) else { continue };
            if let Some(r) = report.replicas.iter().find(|r| r.region.id == region.id)
                && r.role == Some(Role::Leader)
            {
                leaders.push((ReplicaView { store: p.store, peer: p.id, r, reads }, mine.id));
            }
        }
    }
    StoreView {
        store,
        liveness,
        report: facts.stores.get(&store),
        leaders,
        hosted,
        now: facts.now,
        config: facts.config,
        reads,
    }
}

fn cluster_view<'a>(facts: &'a Facts<'a>, reads: &'a Cell<u32>) -> ClusterView<'a> {
    let mut stores = Vec::new();
    for (store, report) in facts.stores {
        if !facts.is_up(*store) {
            continue;
        }
        let replicas = report
            .replicas
            .iter()
            .filter(|r| r.region.id != regionkv_raft::directory::DIRECTORY)
            .map(|r| ReplicaView { store: *store, peer: r.peer, r, reads })
            .collect();
        stores.push((report, replicas));
    }
    ClusterView { stores, config: facts.config, reads }
}

#[cfg(test)]
/// The fields `def` declares, as the bit set [`evaluate`] reports reads in.
pub fn declared(def: &AnalysisDef) -> u32 {
    let mut bits = def.requires.iter().fold(0, |b, f| b | f.bit());
    // Reading a follower's recent activity goes through the leader's progress.
    if bits & FieldId::RecentActive.bit() != 0 {
        bits |= FieldId::Progress.bit();
    }
    bits
}
