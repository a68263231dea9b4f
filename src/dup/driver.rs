//! The background work of duplication (one turn every [`DUP_DRIVE_INTERVAL`], inside
//! the cluster's `Background` turn), in two parts:
//!
//! - **Per region**, on each store for the regions it leads: a region covered by a
//!   live duplication (`Init` to `Paused`) that holds no entry of it (or one of an
//!   older incarnation) gets a `Start` proposed (its floor: the log from the `Start`
//!   on is kept); one covered by a `Removed` or `Broken` duplication that holds an
//!   entry gets a `Stop` (its floor released); one covered by a duplication cutting
//!   over (`CuttingOver`, `CutOver`) whose entry streams unfenced gets a `Fence`.
//! - **Cluster level**, on the store that leads the directory: `Init` moves to
//!   `Prepare` (or to `Log` without a seed) once every covered region's leader holds
//!   an entry of this incarnation; a `Removed` record is dropped once none does.
//!
//! Each step is a Raft command that checks what it moves from (the directory's status
//! change names the status it leaves; a region's `Start` is refused if the entry
//! exists), so a step taken twice, or by two drivers at once, is taken once. A
//! duplication whose status this binary does not know (`Unspecified`) is left alone:
//! frozen.

use std::sync::Arc;
use std::time::{Duration, Instant};

use regionkv_engine::Region;
use regionkv_engine::dup::{DupEntry, DupStage, DupTable};
use regionkv_raft::directory::{
    self, DIRECTORY, DirCmd, DupAlteration, DupRecord, DupStatus, RegionRecord,
};
use regionkv_raft::dup::{DupCmd, DupRequest};
use regionkv_raft::{StateRole, Store};

use crate::backend::directory_dups;
use crate::control::ClusterOps;
use crate::dup::remote::{Follower, Remotes};
use crate::dup::ship;

/// How often the driver looks at the duplications.
pub(crate) const DUP_DRIVE_INTERVAL: Duration = Duration::from_millis(200);

/// The longest the driver waits for one directory command.
const DUP_DIRECTORY_DEADLINE: Duration = Duration::from_secs(2);

/// Follower clusters in this process, by the name a duplication's record gives.
pub(crate) type Targets = Arc<parking_lot::RwLock<std::collections::HashMap<String, crate::Db>>>;

/// The duplication driver of one cluster driver (`Background`).
pub(crate) struct DupDriver {
    next: Instant,
    /// Where duplications ship to (in this process).
    pub targets: Targets,
    /// Connections to followers in other processes.
    remotes: Remotes,
}

impl DupDriver {
    pub fn new() -> DupDriver {
        DupDriver { next: Instant::now(), targets: Targets::default(), remotes: Remotes::default() }
    }

    /// One turn over `stores` (those this driver runs in process).
    pub fn turn(&mut self, ops: &ClusterOps, stores: &[Arc<Store>]) {
        if Instant::now() < self.next {
            return;
        }
        self.next = Instant::now() + DUP_DRIVE_INTERVAL;
        // The directory's leader's replica if it is here and applied all it
        // committed: then a region's entry of a duplication it does not hold is one
        // whose record was dropped (ids are never reused), and is stopped.
        let fresh = stores.iter().find(|s| leads_directory(s)).and_then(|s| directory_dups(s));
        let orphans_known = fresh.is_some();
        // Else a local replica (no call), else any.
        let Some(records) = fresh
            .or_else(|| stores.iter().find_map(|s| directory_dups(s)))
            .or_else(|| ops.backend().dups())
        else {
            return;
        };
        for store in stores {
            drive_regions(store, &records, orphans_known);
            self.ship(ops, store, &records);
        }
        if let Some(leader) = stores.iter().find(|s| leads_directory(s)) {
            drive_cluster(ops, leader, &records);
        }
    }
}

impl DupDriver {
    /// One shipping step of every duplication in every region `store` leads.
    fn ship(&self, ops: &ClusterOps, store: &Store, records: &[DupRecord]) {
        let shipping = |s: DupStatus| {
            matches!(
                s,
                DupStatus::Prepare | DupStatus::App | DupStatus::Log | DupStatus::CuttingOver
            )
        };
        // Connections of duplications that stopped shipping go even on a turn that
        // ships nothing.
        self.remotes.retain(records);
        if !records.iter().any(|r| shipping(r.status) || (r.status == DupStatus::Paused && !r.seed))
        {
            return;
        }
        for peer in store.status() {
            if peer.role != StateRole::Leader || !peer.initialized || peer.region.id == DIRECTORY {
                continue;
            }
            let table = peer.dups.unwrap_or_default();
            for record in records.iter().filter(|r| covers(r, &peer.region)) {
                let Some(DupEntry::Known(state)) = table.get(record.dup_id) else { continue };
                if !depends_met(ops, &state.depends_on) {
                    continue;
                }
                let outcome = match self.remotes.follower(&self.targets, record) {
                    Follower::Ready(follower) => {
                        ship::step(store, &peer.region, record, state, &follower)
                    }
                    Follower::NotYet => continue,
                    Follower::Broken(reason, why) => ship::Outcome::Broken(reason, why),
                };
                if let ship::Outcome::Broken(reason, why) = outcome {
                    tracing::warn!(dup = record.dup_id, region = peer.region.id.0, %why, "duplication broken");
                    let a = DupAlteration {
                        dup_id: record.dup_id,
                        from: record.status,
                        to: DupStatus::Broken,
                        reason: Some(reason),
                    };
                    if let Err(e) = ops.directory(&DirCmd::AlterDup(a), DUP_DIRECTORY_DEADLINE) {
                        tracing::debug!(dup = record.dup_id, error = %e, "duplication not moved to broken yet");
                    }
                }
            }
        }
    }
}

/// True if every region this one's stream waits for confirmed the index it must (a
/// region no store leads any more counts as done: a merged-away source).
fn depends_met(ops: &ClusterOps, depends_on: &[(regionkv_engine::RegionId, u64)]) -> bool {
    let backend = ops.backend();
    depends_on.iter().all(|&(region, index)| {
        let Some(leader) = backend.leader_of(region) else { return true };
        let table = backend.peer_status(leader, region).and_then(|s| s.dups);
        table.is_some_and(|t| {
            t.iter()
                .all(|(_, e)| matches!(e, DupEntry::Known(s) if s.confirmed.unwrap_or(0) >= index))
        })
    })
}

/// True if `store` leads the directory and applied all it committed.
fn leads_directory(store: &Store) -> bool {
    store
        .peer_status(DIRECTORY)
        .is_some_and(|s| s.role == StateRole::Leader && s.applied >= s.commit)
}

/// What the region's entry of `record` needs next, if anything.
pub(crate) fn region_step(record: &DupRecord, entry: Option<&DupEntry>) -> Option<DupCmd> {
    let dup_id = record.dup_id;
    match record.status {
        DupStatus::Removed | DupStatus::Broken => entry.map(|_| DupCmd::Stop { dup_id }),
        DupStatus::Init
        | DupStatus::Prepare
        | DupStatus::App
        | DupStatus::Log
        | DupStatus::Paused => match entry {
            None => Some(DupCmd::Start { dup_id, incarnation: record.incarnation }),
            Some(DupEntry::Known(s)) if s.incarnation < record.incarnation => {
                Some(DupCmd::Start { dup_id, incarnation: record.incarnation })
            }
            Some(_) => None,
        },
        // The cutover: every streaming entry of this incarnation gets the fence (a
        // fenced one is left as it is; nothing is started any more).
        DupStatus::CuttingOver | DupStatus::CutOver => match entry {
            Some(DupEntry::Known(s))
                if s.incarnation == record.incarnation
                    && s.stage == DupStage::Streaming
                    && s.fence.is_none() =>
            {
                Some(DupCmd::Fence {
                    dup_id,
                    incarnation: record.incarnation,
                    start: record.start.clone(),
                    end: record.end.clone(),
                })
            }
            _ => None,
        },
        // Frozen (a status of a newer binary), or one not listed: leave it.
        _ => None,
    }
}

fn drive_regions(store: &Store, records: &[DupRecord], orphans_known: bool) {
    for peer in store.status() {
        if peer.role != StateRole::Leader || !peer.initialized || peer.region.id == DIRECTORY {
            continue;
        }
        let table = peer.dups.unwrap_or_default();
        if orphans_known {
            for (dup_id, _) in table.iter() {
                if !records.iter().any(|r| r.dup_id == dup_id) {
                    propose(store, &peer.region, DupCmd::Stop { dup_id });
                }
            }
        }
        for record in records {
            if !covers(record, &peer.region) {
                continue;
            }
            if let Some(cmd) = region_step(record, table.get(record.dup_id)) {
                propose(store, &peer.region, cmd);
            }
        }
    }
}

fn covers(record: &DupRecord, region: &Region) -> bool {
    record.overlaps(&region.start, region.end.as_deref())
}

fn propose(store: &Store, region: &Region, cmd: DupCmd) {
    let id = region.id;
    tracing::debug!(region = id.0, ?cmd, "duplication step proposed");
    store.dup(DupRequest {
        region: id,
        epoch: region.epoch,
        cmd,
        reply: Box::new(move |r| {
            if let Err(e) = r {
                // A refusal is a step taken already, or one the next turn retries.
                tracing::debug!(region = id.0, error = %e, "duplication step not taken");
            }
        }),
    });
}

/// The cluster-level step of `record`, on the store that leads the directory.
fn drive_cluster(ops: &ClusterOps, leader: &Store, records: &[DupRecord]) {
    let view = leader.context().directory.read_view();
    let regions = match directory::regions(&view) {
        Ok(regions) => regions,
        Err(e) => {
            tracing::warn!(error = %e, "the directory's regions do not read");
            return;
        }
    };
    for record in records {
        let covered: Vec<&RegionRecord> =
            regions.iter().filter(|r| covers(record, &r.region)).collect();
        let to = match record.status {
            DupStatus::Init => {
                let started = |t: &DupTable| {
                    matches!(t.get(record.dup_id),
                        Some(DupEntry::Known(s)) if s.incarnation == record.incarnation)
                };
                if !all_leaders(ops, &covered, started) {
                    continue;
                }
                if record.seed { DupStatus::Prepare } else { DupStatus::Log }
            }
            DupStatus::Prepare | DupStatus::App => {
                // Prepare moves on once every region seeds (or streams), App once
                // every region streams.
                let streaming_only = record.status == DupStatus::App;
                let moved_on = |t: &DupTable| {
                    matches!(t.get(record.dup_id),
                        Some(DupEntry::Known(s)) if s.incarnation == record.incarnation
                            && (s.stage == DupStage::Streaming
                                || (!streaming_only && s.stage == DupStage::Seeding)))
                };
                if !all_leaders(ops, &covered, moved_on) {
                    continue;
                }
                if streaming_only { DupStatus::Log } else { DupStatus::App }
            }
            DupStatus::Removed => {
                if all_leaders(ops, &covered, |t| t.get(record.dup_id).is_none()) {
                    let cmd = DirCmd::DropDup { dup_id: record.dup_id };
                    if let Err(e) = ops.directory(&cmd, DUP_DIRECTORY_DEADLINE) {
                        tracing::debug!(dup = record.dup_id, error = %e, "duplication not dropped yet");
                    }
                }
                continue;
            }
            _ => continue,
        };
        let alteration =
            DupAlteration { dup_id: record.dup_id, from: record.status, to, reason: None };
        match ops.directory(&DirCmd::AlterDup(alteration), DUP_DIRECTORY_DEADLINE) {
            Ok(_) => tracing::info!(
                dup = record.dup_id,
                from = record.status.name(),
                to = to.name(),
                "duplication moved"
            ),
            Err(e) => tracing::debug!(dup = record.dup_id, error = %e, "duplication not moved yet"),
        }
    }
}

/// True if every region's leader answers with a table that passes `check`, and has
/// applied all it committed (a new leader may not have applied the latest steps).
fn all_leaders(
    ops: &ClusterOps,
    regions: &[&RegionRecord],
    check: impl Fn(&DupTable) -> bool,
) -> bool {
    let backend = ops.backend();
    regions.iter().all(|r| {
        let id = r.region.id;
        let Some(leader) = backend.leader_of(id) else { return false };
        backend
            .peer_status(leader, id)
            .filter(|s| s.applied >= s.commit)
            .and_then(|s| s.dups)
            .is_some_and(|t| check(&t))
    })
}
